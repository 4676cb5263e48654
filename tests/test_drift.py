"""Harmful embedding drift: zero for identical models, equal to a hand computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.analysis.drift import drift_sum_sq, embedding_drift
from tests.test_training_fixtures import make_batch, tiny_model


def test_drift_sum_sq_matches_a_hand_computation():
    a = jnp.zeros((2, 1, 3, 2))
    f = a.at[0, 0, 0].set(jnp.asarray([3.0, 4.0])).at[1, 0, 2].set(jnp.asarray([1.0, 1.0]))
    f = f.at[1, 0, 1].set(jnp.asarray([10.0, 0.0]))  # a padding token: must not count
    mask = jnp.asarray([[True, False, True]])
    np.testing.assert_allclose(np.asarray(drift_sum_sq(a, f, mask)), [25.0, 2.0])


def test_identical_models_have_zero_drift_and_different_ones_do_not():
    batches = [make_batch(rows=4, length=12, seed=s) for s in range(2)]
    aligned = tiny_model(lora=False, seed=0)
    same = embedding_drift(aligned, tiny_model(lora=False, seed=0), batches)
    assert same["sum_sq_total"] == 0.0 and same["l2_total"] == 0.0
    assert same["tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)
    moved = tiny_model(lora=False, seed=0)
    w = moved.layers.w_q
    w.set_value(w.get_value() + 0.05 * jax.random.normal(jax.random.key(0), w.get_value().shape))
    out = embedding_drift(aligned, moved, batches)
    assert out["sum_sq_total"] > 0
    assert out["l2_total"] == pytest.approx(np.sqrt(out["sum_sq_total"]))
    assert out["sum_sq_total"] == pytest.approx(sum(out["sum_sq_per_layer"]))
    with pytest.raises(ValueError, match="drift site"):
        embedding_drift(aligned, moved, batches, site="mlp_in")
