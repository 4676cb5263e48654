"""The train-step benchmark's FLOP accounting and batch, and the fast step paths it
measures against their plain references."""

from __future__ import annotations

import os
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jcore

from benchmarks.step_gemms import (Gemm, framework_gemms, gemm_operands, step_gemms, summarize,
                                   time_step_gemms, torch_product, xla_product)
from benchmarks.timing import with_torch_threads
from benchmarks.train_step import make_batch, model_flops_per_step, step_times
from research.models.transformer import init_decoder
from research.training.losses import masked_nll_sum, sft_loss_sum
from research.training.state import split_model
from tests.test_training_fixtures import TINY
from tests.test_training_fixtures import make_batch as make_tiny_batch


def test_model_flops_match_a_hand_count():
    # TINY: D=32, F=64, L=2, 4 heads x 8 = 32 (q), 2 kv heads x 8 = 16, V=128.
    per_layer = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64
    matmul_params = 2 * per_layer + 32 * 128
    rows, length = 2, 4
    attention = 3 * 4 * rows * length * length * 32 * 2
    assert model_flops_per_step(TINY, rows, length) == 6 * matmul_params * rows * length + attention
    # a head that unembeds 5 of the 8 positions executes 3 positions' head FLOPs less
    assert (model_flops_per_step(TINY, rows, length) - model_flops_per_step(TINY, rows, length, 5)
            == 6 * 32 * 128 * 3)


def test_benchmark_batch_masks_the_prompt_quarter():
    batch = make_batch(vocab=128, rows=2, length=8)
    assert batch["tokens"].shape == (2, 8) and batch["tokens"].max() < 128
    assert batch["loss_mask"][:, :2].sum() == 0 and batch["loss_mask"][:, 2:].all()
    assert batch["attention_mask"].all()
    assert batch["loss_rows"].tolist() == [[1, 2, 3, 4, 5, 6, 7]] * 2  # 7 = T-1: padding
    assert "loss_rows" not in make_batch(vocab=128, rows=2, length=8, all_positions=True)


@pytest.mark.parametrize("tied", [False, True])
def test_hidden_loss_path_equals_the_logits_loss(tied):
    """The step's fast loss (hidden states, gathered target rows) is the logits loss."""
    model = init_decoder(TINY.replace(tie_word_embeddings=tied), seed=1)
    graphdef, params, frozen = split_model(model, "full")
    batch = {k: jnp.asarray(v) for k, v in make_tiny_batch(rows=4).items()}

    def reference(p):
        model = nnx.merge(graphdef, p, frozen)
        out = model(batch["tokens"], attention_mask=batch["attention_mask"])
        total = masked_nll_sum(out.logits, batch)
        return total.loss_sum, {"tokens": total.tokens}

    fast = jax.value_and_grad(sft_loss_sum, has_aux=True)(params, frozen, graphdef, batch)
    slow = jax.value_and_grad(reference, has_aux=True)(params)
    np.testing.assert_allclose(fast[0][0], slow[0][0], rtol=1e-5)
    assert fast[0][1]["tokens"] == slow[0][1]["tokens"]
    for a, b in zip(jax.tree.leaves(fast[1]), jax.tree.leaves(slow[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_torch_reference_runs_with_the_requested_threads_and_restores_them():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    run = with_torch_threads(torch.get_num_threads, 1)
    assert run() == 1
    assert torch.get_num_threads() == before


def test_step_times_alternate_runners_and_report_other_load():
    calls = []
    times, system, others = step_times(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2)
    assert calls == ["a", "b", "a", "b"]
    assert [len(v) for v in times.values()] == [2, 2]
    assert [len(v) for v in system.values()] == [2, 2]
    assert all(t >= 0.0 for ts in system.values() for t in ts)
    assert others is None or others >= 0.0


def test_system_time_is_charged_to_the_runner_that_spent_it():
    def syscalls():  # mostly system time: ~0.1 s wall
        for _ in range(100000):
            os.close(os.open(os.devnull, os.O_RDONLY))

    def arithmetic():  # user time only, and longer: wall or user time would order these
        sum(i * i for i in range(3_000_000))  # the other way round

    _, system, _ = step_times({"syscalls": syscalls, "arithmetic": arithmetic}, 2)
    assert min(system["syscalls"]) > max(system["arithmetic"])


def test_step_times_settle_runs_each_step_untimed_first():
    calls = []
    times, _, _ = step_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2,
                             settle=True)
    assert calls == ["a", "a", "b", "b", "a", "a", "b", "b"]
    assert [len(v) for v in times.values()] == [2, 2]


def _two_d_dots(jaxpr: jcore.Jaxpr, times: int = 1, found: Counter | None = None) -> Counter:
    """The 2-D `dot_general`s of a jaxpr (and its sub-jaxprs, a scan's body counted once
    per iteration) as `Gemm`s."""
    found = Counter() if found is None else found
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
            a, b = (v.aval.shape for v in eqn.invars)
            if not lb and len(a) == len(b) == 2:
                layout = {((1,), (0,)): "NN", ((1,), (1,)): "NT", ((0,), (0,)): "TN"}[
                    (tuple(lc), tuple(rc))]
                m, k = (a[1], a[0]) if layout == "TN" else a
                n = b[0] if layout == "NT" else b[1]
                if layout == "TN":  # dW or dW.T: the same product, output transposed
                    m, n = sorted((m, n))
                found[Gemm(layout, m, k, n)] += times
        inner = times * eqn.params.get("length", 1) if eqn.primitive.name == "scan" else times
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, (jcore.ClosedJaxpr, jcore.Jaxpr)):
                    _two_d_dots(getattr(sub, "jaxpr", sub), inner, found)
    return found


@pytest.mark.parametrize("tied", [True, False])
def test_step_gemms_are_the_matmuls_of_the_jax_step(tied):
    """The enumeration equals the 2-D products in the jaxpr of the real loss gradient."""
    cfg = TINY.replace(tie_word_embeddings=tied)
    graphdef, params, frozen = split_model(init_decoder(cfg, seed=1), "full")
    batch = {k: jnp.asarray(v) for k, v in make_tiny_batch(rows=4).items()}
    rows, length = batch["tokens"].shape
    jaxpr = jax.make_jaxpr(jax.grad(
        lambda p: sft_loss_sum(p, frozen, graphdef, batch)[0]))(params)
    expected = Counter()
    for g, count in framework_gemms(step_gemms(cfg, rows, length), "jax").items():
        if g.layout == "TN":
            g = Gemm("TN", min(g.m, g.n), g.k, max(g.m, g.n))
        expected[g] += count
    assert _two_d_dots(jaxpr.jaxpr) == expected


def test_torch_step_gemms_use_linear_layouts_and_all_rows():
    # TINY: D=32, F=64, L=2, V=128; nn.Linear weights are [out, in]; logits on all rows.
    rows, length = 2, 4
    steps = step_gemms(TINY.replace(tie_word_embeddings=True), rows, length)
    torch_side = framework_gemms(steps, "torch")
    assert torch_side[Gemm("NT", 8, 32, 64)] == 2 * 2  # gate and up forward, two layers
    assert torch_side[Gemm("NN", 8, 64, 32)] == 2 * 2  # their input gradients
    assert torch_side[Gemm("TN", 64, 8, 32)] == 2 * 2  # their weight gradients
    assert torch_side[Gemm("NT", 8, 32, 128)] == 1  # logits on rows x length
    assert framework_gemms(steps, "jax")[Gemm("NT", 6, 32, 128)] == 1  # on rows x (length - 1)
    # the same products, paired by role: only the head's differ, by its rows
    for pair in steps:
        head = 128 in (pair.jax.m, pair.jax.k, pair.jax.n)
        assert pair.torch.flops == pair.jax.flops * (length / (length - 1) if head else 1)


@pytest.mark.parametrize("layout", ["NN", "NT", "TN"])
def test_both_frameworks_compute_the_product_the_layout_names(layout):
    torch = pytest.importorskip("torch")
    gemm = Gemm(layout, 3, 5, 4)
    a, b = gemm_operands(gemm, np.random.default_rng(0))
    expected = {"NN": lambda: a @ b, "NT": lambda: a @ b.T, "TN": lambda: a.T @ b}[layout]()
    assert expected.shape == (3, 4)
    np.testing.assert_allclose(xla_product(gemm)(a, b), expected, rtol=1e-5, atol=1e-5)
    product = torch_product(gemm)(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_allclose(product.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_step_gemm_timings_add_up_per_step():
    pytest.importorskip("torch")
    cfg = TINY.replace(num_layers=1, vocab_size=64)
    timings = time_step_gemms(cfg, rows=2, length=4, calls=1)
    assert [t.count for t in timings] == list(step_gemms(cfg, 2, 4).values())
    assert all(t.xla_s > 0 and t.torch_s > 0 for t in timings)
    total = summarize(timings)
    assert total["gemm_seconds_xla"] == pytest.approx(sum(t.xla_s * t.count for t in timings))
    assert total["gemm_time_ratio"] == pytest.approx(total["gemm_seconds_torch"]
                                                     / total["gemm_seconds_xla"])
