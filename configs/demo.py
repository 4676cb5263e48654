"""`make demo`: non-aligned base and SFT-aligned embedded model, each fine-tuned on a
harmful mix (p = 0.1) with and without parameter EMA; sized for <= 20 min on 2 CPU cores."""

from configs import base


def get_config():
    cfg = base.get_config()
    cfg.run.experiment = "demo"
    cfg.run.title = "Demo: SFT alignment, then a harmful user fine-tune, with and without EMA"
    d = cfg.data
    d.n_align_harmful, d.n_user_harmful, d.n_align_benign_prompts = 96, 24, 112
    d.generation.max_new_tokens = 48
    cfg.align.epochs, cfg.align.max_length = 2, 80
    cfg.align.buckets = (48, 64, 80)
    cfg.align.optimizer.lr = 1e-3
    f = cfg.finetune
    f.n, f.p_values, f.epochs, f.max_length, f.buckets = 64, (0.1,), 2, 80, (48, 64, 80)
    f.optimizer.lr = 5e-4
    cfg.eval.n_harmful, cfg.eval.n_benign, cfg.eval.n_task = 40, 40, 32
    cfg.eval.max_new_tokens, cfg.eval.batch_size = 24, 20
    return cfg
