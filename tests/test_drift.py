"""Harmful embedding drift: zero for identical models, equal to a hand computation, and
the stage-2 curve agrees with the two-model measurement and the alignment loss, and its
per-example sums give the totals' bootstrap CIs; the relative drift ||dh|| / ||h_ref||
and the paired difference of two arms' relative drift."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.analysis.drift import (drift_result, drift_sum_sq, embedding_drift,
                                     make_drift_curve, paired_drift_difference,
                                     reference_sum_sq_rows, relative_drift,
                                     relative_with_ci, summarize, total_with_ci)
from research.pipeline.report import drift_table
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


def test_relative_drift_matches_a_hand_computation():
    # [L=2, B=1, T=3, D=2]; the middle token is padding
    h = jnp.asarray([[[[1.0, 2.0], [9.0, 9.0], [2.0, 0.0]]],
                     [[[0.0, 3.0], [9.0, 9.0], [4.0, 0.0]]]])
    mask = jnp.asarray([[True, False, True]])
    ref = np.asarray(reference_sum_sq_rows(h, mask))
    np.testing.assert_allclose(ref, [[5.0 + 4.0], [9.0 + 16.0]])
    f = h.at[0, 0, 0].add(jnp.asarray([1.0, 0.0])).at[1, 0, 2].add(jnp.asarray([0.0, 2.0]))
    f = f.at[:, 0, 1].add(100.0)  # padding: must not count
    sq = np.asarray(drift_sum_sq(h, f, mask))
    np.testing.assert_allclose(sq, [1.0, 4.0])
    assert relative_drift(sq, ref) == pytest.approx(np.sqrt(5.0 / 34.0))
    out = summarize(sq, 4, "attn_out", ref.sum(1))
    np.testing.assert_allclose(out["relative_per_layer"], [1.0 / 3.0, 2.0 / 5.0])
    assert out["relative_total"] == pytest.approx(np.sqrt(5.0 / 34.0))
    # a model against itself: 0; h against 2h: ||2h - h|| / ||h|| = 1
    assert relative_drift(np.asarray(drift_sum_sq(h, h, mask)), ref) == 0.0
    assert relative_drift(np.asarray(drift_sum_sq(h, 2 * h, mask)), ref) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="nonzero"):
        relative_drift([1.0], [0.0])


def test_relative_ci_and_paired_difference():
    rng = np.random.default_rng(0)
    ref = rng.uniform(1.0, 2.0, 40)
    a = {"sum_sq": (0.1 * rng.uniform(0.5, 1.5, 40)) ** 2 * ref, "ref_sum_sq": ref}
    m = relative_with_ci(a, seed=0)
    assert m["n"] == 40 and m["ci_low"] < m["value"] < m["ci_high"]
    assert m["value"] == pytest.approx(relative_drift(a["sum_sq"], ref))
    # every example drifts by 0.1 of its reference in one arm and 0.25 in the other:
    # the shift is exactly 0.15 in every resample
    flat = {"sum_sq": 0.1 ** 2 * ref, "ref_sum_sq": ref}
    far = {"sum_sq": 0.25 ** 2 * 2.0 * ref, "ref_sum_sq": 2.0 * ref}
    shift = paired_drift_difference(flat, far, seed=0)
    for k in ("value", "ci_low", "ci_high"):
        assert shift[k] == pytest.approx(0.15)
    assert paired_drift_difference(far, flat)["value"] == pytest.approx(-0.15)
    # b drifts exactly twice as far as a on every example (relative to its own, different
    # reference): the difference is a's relative drift, in every resample too
    ref_b = 3.0 * ref
    b = {"sum_sq": 4.0 * a["sum_sq"] * 3.0, "ref_sum_sq": ref_b}
    d = paired_drift_difference(a, b, seed=0)
    assert d["value"] == pytest.approx(m["value"]) and d["n"] == 40
    assert 0 < d["ci_low"] <= d["value"] <= d["ci_high"]
    np.testing.assert_allclose([d["ci_low"], d["ci_high"]],
                               [m["ci_low"], m["ci_high"]], rtol=1e-9)
    back = paired_drift_difference(b, a, seed=0)
    assert back["value"] == pytest.approx(-d["value"]) and back["ci_high"] < 0
    # a noisy shift: known difference recovered inside a CI that excludes zero
    c = {"sum_sq": (np.sqrt(a["sum_sq"] / ref) + 0.05 + 0.01 * rng.standard_normal(40)) ** 2
         * ref, "ref_sum_sq": ref}
    e = paired_drift_difference(a, c, seed=0)
    assert e["value"] == pytest.approx(relative_drift(c["sum_sq"], ref) - m["value"])
    assert 0.03 < e["ci_low"] < e["value"] < e["ci_high"] < 0.07
    assert paired_drift_difference(a, a)["value"] == 0.0
    with pytest.raises(ValueError, match="same examples"):
        paired_drift_difference(a, {k: v[:10] for k, v in a.items()})


def test_identical_models_have_zero_drift_and_the_curve_agrees():
    batches = [make_batch(rows=4, length=12, seed=s) for s in range(2)]
    aligned = tiny_model(lora=True, seed=0)
    same = embedding_drift(aligned, tiny_model(lora=True, seed=0), batches)
    assert same["sum_sq_total"] == 0.0 and same["l2_total"] == 0.0
    assert same["relative_total"] == 0.0 and same["relative_per_layer"] == [0.0, 0.0]
    assert same["tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)

    graphdef, params, frozen = split_model(tiny_model(lora=True, seed=0), "lora")
    curve = make_drift_curve(graphdef, frozen, params, batches)
    start = curve(params)
    assert start["sum_sq_total"] == 0.0 and start["relative_total"] == 0.0
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
    np.testing.assert_allclose(point["ref_sum_sq_per_layer"], direct["ref_sum_sq_per_layer"],
                               rtol=1e-5)
    assert point["relative_total"] == pytest.approx(direct["relative_total"], rel=1e-5)
    assert 0 < point["relative_total"] == pytest.approx(
        np.sqrt(point["sum_sq_total"] / sum(point["ref_sum_sq_per_layer"])))
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
    ref_per_example = point["ref_sum_sq_per_example"]
    assert len(ref_per_example) == 5 and min(ref_per_example) > 0
    assert sum(ref_per_example) == pytest.approx(sum(point["ref_sum_sq_per_layer"]), rel=1e-6)

    result = drift_result(point, seed=0)
    s, l2 = result["sum_sq_total"], result["l2_total"]
    assert s["n"] == l2["n"] == result["examples"] == 5
    assert s["ci_low"] < s["value"] < s["ci_high"]
    assert l2["value"] == pytest.approx(point["l2_total"])
    assert l2["ci_low"] == pytest.approx(np.sqrt(s["ci_low"]))
    assert result["alignment_loss"] == point["alignment_loss"]
    rel = result["relative_total"]
    assert rel["n"] == 5 and rel["ci_low"] < rel["value"] < rel["ci_high"]
    assert rel["value"] == pytest.approx(point["relative_total"])
    assert result["per_example"] == {"sum_sq": per_example, "ref_sum_sq": ref_per_example}
    assert paired_drift_difference(result["per_example"], result["per_example"])[
        "value"] == 0.0
    table = "\n".join(drift_table({"ft": {"harmful_drift": result}}))
    assert f"| ft | {result['l2_total']['value']:.4g} [" in table
    assert f"| {rel['value']:.4g} [{rel['ci_low']:.4g}, {rel['ci_high']:.4g}] |" in table
    # a point without reference sums (an older stage summary): no relative drift
    old = drift_result({k: v for k, v in point.items() if k != "ref_sum_sq_per_example"})
    assert "relative_total" not in old and old["per_example"] == {"sum_sq": per_example}
    assert "| ft | " in "\n".join(drift_table({"ft": {"harmful_drift": old}}))
    assert total_with_ci([2.0, 2.0, 2.0]) == {"value": 6.0, "ci_low": 6.0, "ci_high": 6.0,
                                              "n": 3}
