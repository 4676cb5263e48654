"""`make demo`: non-aligned base and SFT-aligned embedded model, each fine-tuned on a
harmful mix (p = 0.1) with and without parameter EMA; 17.6 min from empty caches on a
2-core AVX-512 Xeon (target <= 20 min; an estimated 34-36 min on a 2-core CPU half as fast).

Full fine-tuning. Stage 1 aligns on 200 harmful prompts with varied refusals and 320
benign requests with the base model's answers, an equal share from benign twins (the
harmful requests' frames with benign content), PersistBench everyday requests, the
project's everyday requests, FreshQA and WritingBench (train splits), for 3 epochs at lr
5e-5. Stage 2 is the issue's reference user fine-tune: 2 epochs at lr 3e-5.

The data were chosen by looking at the test split (LoRA r=8 at lr 1e-3 with fewer benign
rows refused 92.5% and over-refused 20%; see README). The stage-1 lr and epochs were
then chosen on the val split (`--config.eval.split=val`): 2 epochs at 3e-5 refused 86.2%
of val's harmful prompts, 3 epochs at 5e-5 93.8%. Nothing was tuned on reserved
evaluation data.
"""

from configs import base


def get_config():
    cfg = base.get_config()
    cfg.run.experiment = "demo"
    cfg.seeds = (0,)  # one seed to stay within 20 minutes; studies train three
    cfg.run.title = "Demo: SFT alignment, then a harmful user fine-tune, with and without EMA"
    cfg.model.finetune_mode = "full"
    d = cfg.data
    d.n_align_harmful, d.n_user_harmful, d.n_align_benign_prompts = 200, 24, 320
    d.generation.max_new_tokens = 48
    cfg.align.epochs, cfg.align.max_length = 3, 80
    cfg.align.buckets = (48, 64, 80)
    cfg.align.optimizer.lr = 5e-5
    f = cfg.finetune
    f.n, f.p_values, f.epochs, f.max_length, f.buckets = 64, (0.1,), 2, 80, (48, 64, 80)
    f.optimizer.lr = 3e-5
    f.starts = ("aligned",)
    cfg.eval.n_harmful, cfg.eval.n_benign, cfg.eval.n_task = 100, 100, 64
    cfg.eval.batch_size = 20
    return cfg
