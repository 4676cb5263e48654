"""Vaccine vs SFT alignment, each attacked by a harmful user fine-tune, p in {0, .05, .1, .2}.

The study driver (experiments/harmful_finetuning.py) runs one alignment method per run
and caches every stage by its config, so the comparison is two runs sharing the cache
(data, base-model answers and the evaluation of the base model are reused):

    python -m experiments.harmful_finetuning --config=configs/vaccine.py
    python -m experiments.harmful_finetuning --config=configs/vaccine.py \
        --config.align.method=sft --config.run.name=sft_arm

rho sweep (the paper sweeps 0.01 to 10): repeat the first run with
`--config.align.method_config.rho=R --config.run.name=rho_R` for R in `RHO_SWEEP`.
Each run's results.json holds harmful score and task accuracy with CIs. The driver does
not compute drift yet: `research.analysis.drift.embedding_drift` (aligned vs fine-tuned
checkpoint on the alignment data) and `make_drift_curve` (during stage 2) are the
functions to call. Sized like the demo (embedded model, shared CPU), aligned start only,
no EMA.
"""

import ml_collections

from configs import demo

RHO_SWEEP = (0.1, 0.5, 2.0, 5.0)


def get_config() -> ml_collections.ConfigDict:
    cfg = demo.get_config()
    cfg.run.experiment = "vaccine"
    cfg.run.title = "Vaccine vs SFT alignment under harmful fine-tuning (p sweep)"
    cfg.align.method = "vaccine"
    cfg.align.method_config = ml_collections.ConfigDict(dict(
        rho=2.0, site="attn_out", tau=1, remat=False))
    cfg.finetune.p_values = (0.0, 0.05, 0.1, 0.2)
    cfg.finetune.starts = ("aligned",)
    cfg.finetune.ema_betas = (0.0,)
    return cfg
