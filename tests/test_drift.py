"""Harmful embedding drift: zero for identical models, equal to a hand computation, and
the stage-2 curve agrees with the two-model measurement and the alignment loss, and its
per-example sums give the totals' bootstrap CIs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.analysis.drift import (drift_result, drift_sum_sq, embedding_drift,
                                     make_drift_curve, summarize, total_with_ci)
from research.training.losses import sft_loss_sum
from research.training.state import split_model
from tests.test_training_fixtures import make_batch, tiny_model


def test_drift_matches_a_hand_computation():
    a = jnp.zeros((2, 1, 3, 2))
    f = a.at[0, 0, 0].set(jnp.asarray([3.0, 4.0])).at[1, 0, 2].set(jnp.asarray([1.0, 1.0]))
    f = f.at[1, 0, 1].set(jnp.asarray([10.0, 0.0]))  # a padding token: must not count
    mask = jnp.asarray([[True, False, True]])
    per_layer = np.asarray(drift_sum_sq(a, f, mask))
    np.testing.assert_allclose(per_layer, [25.0, 2.0])
    out = summarize(per_layer, 2, "attn_out")
    np.testing.assert_allclose(out["l2_per_layer"], [5.0, np.sqrt(2.0)])
    assert out["sum_sq_total"] == pytest.approx(27.0)
    assert out["l2_total"] == pytest.approx(np.sqrt(27.0))


def test_identical_models_have_zero_drift_and_the_curve_agrees():
    batches = [make_batch(rows=4, length=12, seed=s) for s in range(2)]
    aligned = tiny_model(lora=True, seed=0)
    same = embedding_drift(aligned, tiny_model(lora=True, seed=0), batches)
    assert same["sum_sq_total"] == 0.0 and same["l2_total"] == 0.0
    assert same["tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)

    graphdef, params, frozen = split_model(tiny_model(lora=True, seed=0), "lora")
    curve = make_drift_curve(graphdef, frozen, params, batches)
    start = curve(params)
    assert start["sum_sq_total"] == 0.0
    loss, tokens = 0.0, 0.0
    for b in batches:
        ls, aux = sft_loss_sum(params, frozen, graphdef, {k: jnp.asarray(v) for k, v in
                                                          b.items()})
        loss, tokens = loss + float(ls), tokens + float(aux["tokens"])
    assert start["alignment_loss"] == pytest.approx(loss / tokens, rel=1e-5)

    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(params))))
    moved = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), params)
    point = curve(moved)
    assert point["sum_sq_total"] > 0 and point["alignment_loss"] != start["alignment_loss"]
    assert point["l2_total"] == pytest.approx(np.sqrt(point["sum_sq_total"]))
    assert point["sum_sq_total"] == pytest.approx(sum(point["sum_sq_per_layer"]))
    direct = embedding_drift(aligned, nnx.merge(graphdef, moved, frozen), batches)
    np.testing.assert_allclose(point["sum_sq_per_layer"], direct["sum_sq_per_layer"],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="drift site"):
        embedding_drift(aligned, aligned, batches, site="mlp_in")


def test_curve_points_split_the_total_by_example_and_the_result_has_cis():
    batches = [make_batch(rows=3, length=10, seed=s) for s in range(2)]
    batches[1]["attention_mask"][2] = 0  # a padding row: not an example
    graphdef, params, frozen = split_model(tiny_model(lora=True, seed=0), "lora")
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    moved = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), params)
    point = make_drift_curve(graphdef, frozen, params, batches)(moved)
    per_example = point["sum_sq_per_example"]
    assert len(per_example) == 5 and min(per_example) > 0
    assert sum(per_example) == pytest.approx(point["sum_sq_total"], rel=1e-6)

    result = drift_result(point, seed=0)
    s, l2 = result["sum_sq_total"], result["l2_total"]
    assert s["n"] == l2["n"] == result["examples"] == 5
    assert s["ci_low"] < s["value"] < s["ci_high"]
    assert l2["value"] == pytest.approx(point["l2_total"])
    assert l2["ci_low"] == pytest.approx(np.sqrt(s["ci_low"]))
    assert result["alignment_loss"] == point["alignment_loss"]
    assert total_with_ci([2.0, 2.0, 2.0]) == {"value": 6.0, "ci_low": 6.0, "ci_high": 6.0,
                                              "n": 3}
