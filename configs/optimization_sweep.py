"""The optimizer study: fine-tune the SFT-aligned model on the harmful mix over a grid
of learning rate x batch size x number of steps, with and without parameter EMA."""

import ml_collections

from configs import demo


def get_config():
    cfg = demo.get_config()  # the demo's data, alignment and evaluation sizes
    cfg.run.experiment = "optimization_sweep"
    cfg.run.title = "Optimizer study: lr x batch size x steps, with and without EMA"
    cfg.sweep = ml_collections.ConfigDict(dict(
        p=0.1, lrs=(1e-4, 5e-4, 2e-3), batch_sizes=(4, 8), steps=(8, 24),
        ema_betas=(0.0, 0.99), safe_harmful_score=20.0))
    return cfg
