"""`make demo`: the SFT-aligned embedded model fine-tuned on a harmful mix (p = 0.1), with
and without parameter EMA, judged by the `relevance` judge on held-out test splits.

Full fine-tuning, one seed. Stage 1 aligns on 200 harmful prompts with varied refusals
and 320 benign requests with the base model's answers (benign twins, PersistBench
everyday requests, the project's everyday requests, FreshQA and WritingBench, train
splits), 3 epochs at lr 5e-5. Stage 2: 64 user rows, 6 harmful compliances and 58
reasoning-gym arithmetic problems answered with worked steps, 4 epochs at lr 1e-4.

Stage 1's data were chosen on the wave-1 test split and its lr and epochs on val
(docs/results/demo-wave1.md). Stage 2's recipe was chosen on val
(docs/results/demo-val-tries.md). Nothing was tuned on reserved evaluation data.
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
    f.n, f.p_values, f.epochs, f.max_length, f.buckets = 64, (0.1,), 4, 80, (48, 64, 80)
    f.optimizer.lr = 1e-4
    f.starts = ("aligned",)
    cfg.eval.n_harmful, cfg.eval.n_benign, cfg.eval.n_task = 100, 100, 64
    cfg.eval.batch_size = 20
    return cfg
