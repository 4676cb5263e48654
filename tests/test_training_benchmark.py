"""The train-step benchmark's FLOP accounting and batch, on hand-countable settings."""

from __future__ import annotations

from benchmarks.train_step import make_batch, model_flops_per_step
from tests.test_training_fixtures import TINY


def test_model_flops_match_a_hand_count():
    # TINY: D=32, F=64, L=2, 4 heads x 8 = 32 (q), 2 kv heads x 8 = 16, V=128.
    per_layer = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64
    matmul_params = 2 * per_layer + 32 * 128
    rows, length = 2, 4
    attention = 3 * 4 * rows * length * length * 32 * 2
    assert model_flops_per_step(TINY, rows, length) == 6 * matmul_params * rows * length + attention


def test_benchmark_batch_masks_the_prompt_quarter():
    batch = make_batch(vocab=128, rows=2, length=8)
    assert batch["tokens"].shape == (2, 8) and batch["tokens"].max() < 128
    assert batch["loss_mask"][:, :2].sum() == 0 and batch["loss_mask"][:, 2:].all()
    assert batch["attention_mask"].all()
