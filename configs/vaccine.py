"""Vaccine vs SFT alignment, each attacked by a harmful user fine-tune, p in {0, .05, .1, .2}.

One run aligns the embedded model with both arms (`align_arms`: SFT, and Vaccine with
rho 2 at attn_out), fine-tunes each aligned model on the user's mix at every p, and
evaluates all of them; its report.md compares Vaccine with SFT at each p (harmful score
and task accuracy, paired 95% CIs) and gives each fine-tune's harmful embedding drift
from its aligned start (L2 norm and sum of squares, per layer and total, CIs over the
alignment examples), with plots/by_method_and_p.png and plots/drift.png (drift and
alignment loss along stage 2, recorded every `finetune.drift.every` steps):

    python -m experiments.harmful_finetuning --config=configs/vaccine.py \
        --config.run.name=vaccine_vs_sft

The rho sweep (the paper sweeps 0.01 to 10): Vaccine at each rho in `RHO_SWEEP` (arms
`vaccine_rho<R>`, "." written "p") and SFT, attacked at p = 0.1:

    python -m experiments.harmful_finetuning --config=configs/vaccine.py:rho_sweep \
        --config.run.name=rho_sweep

or over chosen values (each arm is its own cached stage), e.g.
`--config=configs/vaccine.py:rho_sweep:0.5,5`.

Stages are cached by their config, so the runs share data, base-model answers, the
base model's evaluation and every stage they have in common (the SFT arm, rho = 2 and
p = 0.1). Accelerated Vaccine (eps recomputed every tau steps):
`--config.align_arms.vaccine.method_config.tau=100`. An interrupted run continues with
`--resume`. Sized like the demo (embedded model, shared CPU) but with three seeds per
arm (`--config.seeds=0,` for one): aligned starts only, no EMA. Drift is on here and off in the other configs (it costs a forward pass over the
`drift.n` examples every `drift.every` steps).
"""

import ml_collections

from configs import demo

RHO_SWEEP = (0.1, 0.5, 2.0, 5.0)
P_VALUES = (0.0, 0.05, 0.1, 0.2)


def arm(method: str, **method_config) -> ml_collections.ConfigDict:
    """One stage-1 arm: an alignment method and its options."""
    return ml_collections.ConfigDict(dict(
        method=method, method_config=dict(dict(remat=False), **method_config)))


def vaccine_arm(rho: float, tau: int = 1) -> ml_collections.ConfigDict:
    return arm("vaccine", rho=rho, site="attn_out", tau=tau)


def parse_variant(variant: str) -> tuple[str, tuple[float, ...]]:
    """"" | "rho_sweep" | "rho_sweep:R1,R2,..." -> (name, the rho values to sweep)."""
    name, colon, rhos = variant.partition(":")
    if name not in ("", "rho_sweep") or (colon and name != "rho_sweep"):
        raise ValueError(f"configs/vaccine.py variant must be '', 'rho_sweep' or "
                         f"'rho_sweep:R1,R2,...', got {variant!r}")
    if not colon:
        return name, RHO_SWEEP
    try:
        values = tuple(float(r) for r in rhos.split(","))
    except ValueError:
        raise ValueError(f"configs/vaccine.py: rho values in {variant!r} must be numbers "
                         f"separated by commas") from None
    if any(r <= 0 for r in values):
        raise ValueError(f"configs/vaccine.py: rho values must be > 0, got {values}")
    return name, values


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """`variant`: "" (SFT vs Vaccine over P_VALUES), "rho_sweep" (over RHO_SWEEP), or
    "rho_sweep:0.5,5" (over the rho values given; each arm is cached on its own, so a
    later sweep over more values reuses these)."""
    variant, rho_values = parse_variant(variant)
    cfg = demo.get_config()
    cfg.run.experiment = "vaccine"
    cfg.run.title = "Vaccine vs SFT alignment under harmful fine-tuning (p sweep)"
    cfg.align_arms = ml_collections.ConfigDict({"sft": arm("sft"),
                                                "vaccine": vaccine_arm(2.0)})
    cfg.reference_arm = "sft"
    cfg.seeds = (0, 1, 2)  # each arm trained three times; effects pair seed and prompt
    cfg.finetune.p_values = P_VALUES
    cfg.finetune.starts = ("aligned",)
    cfg.finetune.ema_betas = (0.0,)
    cfg.finetune.drift = ml_collections.ConfigDict(dict(
        enabled=True, n=48, every=2, batch_size=16, site="attn_out"))
    if variant == "rho_sweep":
        cfg.run.title = "Vaccine rho sweep (SFT reference), harmful fine-tune at p = 0.1"
        cfg.align_arms = ml_collections.ConfigDict(
            {"sft": arm("sft"), **{f"vaccine_rho{rho:g}".replace(".", "p"): vaccine_arm(rho)
                                   for rho in rho_values}})
        cfg.finetune.p_values = (0.1,)
    return cfg
