"""The optimizer study: fine-tune the SFT-aligned model on the harmful mix over a grid
of learning rate x batch size x number of steps, with and without parameter EMA.

The demo's data, alignment (full fine-tuning, so its stage 1 is shared through the
cache) and evaluation sizes. Learning rates bracket the demo's user fine-tuning lr 3e-5
by about 3x either way; EMA runs in track mode, so each EMA cell also yields its no-EMA
twin and the 24 cells take 12 trainings. It selects a cell (the best safe one), so it
evaluates on the val split; evaluate the chosen cell on test to report it.
"""

import ml_collections

from configs import demo


def get_config():
    cfg = demo.get_config()
    cfg.run.experiment = "optimization_sweep"
    cfg.run.title = "Optimizer study: lr x batch size x steps, with and without EMA"
    cfg.sweep = ml_collections.ConfigDict(dict(
        p=0.1, lrs=(1e-5, 3e-5, 1e-4), batch_sizes=(4, 8), steps=(8, 16),
        ema_betas=(0.0, 0.99), safe_harmful_score=20.0))
    cfg.eval.split = "val"
    return cfg
