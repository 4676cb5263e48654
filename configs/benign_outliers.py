"""Benign outliers (Self-Inf-N): does fine-tuning the aligned model on the benign
examples with the largest normalized self-influence break safety more than random
benign examples?

    python -m experiments.benign_outliers --config configs/benign_outliers.py

Stage 1 is the demo's alignment (same `data`, `model` and `align` blocks as
configs/demo.py), so after `make demo` it is a cache hit. Stage 2 fine-tunes the aligned
model with the demo's `finetune` block on four sets of k rows each: the Self-Inf-N top k,
k random benign rows, the raw Self-Inf top k and k harmful rows (the base model's
compliant answers).

Scaled to the embedded model on 2 shared CPU cores: the paper keeps k = 100 from the
top 1.2k of tens of thousands of examples; here the pool is `pool_n` = 320 benign
train-split prompts of the main study's benign sources (about 300 usable after dropping
refusals and prompts longer than finetune.max_length), k = 64 (16 fine-tune steps per
arm: batch 8, 2 epochs, the demo's user fine-tune size) and `top_pool` = 128 (2k, the
candidates before the trivial-answer filter). So about 20% of the pool is selected
against the paper's 0.2%: the outliers are far less extreme, which weakens the contrast.
Estimated time (not yet measured end to end): about 20 minutes after `make demo` (pool
answers ~3 min, scoring ~1 s per example under load ~5 min, 4 fine-tunes ~5 min, 4
evaluations ~8 min), about 33 minutes from an empty cache (stage 1 is 189 steps). The
paper's sizes: `--config.outliers.k=100 --config.outliers.top_pool=1200` with a larger
pool.
"""

from __future__ import annotations

import ml_collections

from configs import demo


def outliers_block(*, pool_n: int = 320, k: int = 64, top_pool: int = 128,
                   pool_sources: str = "") -> ml_collections.ConfigDict:
    """The study's own settings; everything else is the main study's config."""
    return ml_collections.ConfigDict(dict(
        pool_sources=pool_sources,  # "" = the main study's data.benign_sources
        pool_n=pool_n,              # benign prompts sampled into the pool (before answers)
        k=k,                        # rows per fine-tuning set
        top_pool=top_pool,          # Self-Inf-N candidates before the trivial filter (1.2k)
        filter_raw=False,           # raw Self-Inf top k unfiltered: the biased baseline
        param_mode="lora",          # gradient over "lora" adapters (fresh, B = 0) or "full"
        chunk_size=4,               # examples per vmapped scoring chunk (memory bound)
        seed=0))


def get_config() -> ml_collections.ConfigDict:
    cfg = demo.get_config()
    cfg.run.experiment = "benign_outliers"
    cfg.run.title = "Benign outliers: Self-Inf-N top k vs random, raw Self-Inf and harmful data"
    cfg.outliers = outliers_block()
    return cfg
