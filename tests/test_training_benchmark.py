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

from benchmarks.step_gemms import Gemm, step_gemms, summarize, time_gemms
from benchmarks.train_step import make_batch, model_flops_per_step, step_times, with_torch_threads
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


def test_benchmark_batch_masks_the_prompt_quarter():
    batch = make_batch(vocab=128, rows=2, length=8)
    assert batch["tokens"].shape == (2, 8) and batch["tokens"].max() < 128
    assert batch["loss_mask"][:, :2].sum() == 0 and batch["loss_mask"][:, 2:].all()
    assert batch["attention_mask"].all()


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
    times, kernel, others = step_times(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2)
    assert calls == ["a", "b", "a", "b"]
    assert [len(v) for v in times.values()] == [2, 2]
    assert [len(v) for v in kernel.values()] == [2, 2]
    assert all(t >= 0.0 for ts in kernel.values() for t in ts)
    assert others is None or others >= 0.0


def test_kernel_time_is_charged_to_the_runner_that_spent_it():
    def syscalls():  # only system calls: opening a file many times
        for _ in range(100000):
            os.close(os.open(os.devnull, os.O_RDONLY))

    def arithmetic():
        sum(i * i for i in range(200000))

    _, kernel, _ = step_times({"syscalls": syscalls, "arithmetic": arithmetic}, 3)
    assert min(kernel["syscalls"]) > max(kernel["arithmetic"])


def test_step_times_settle_runs_each_step_untimed_first():
    calls = []
    times, _, _ = step_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2,
                             settle=True)
    assert calls == ["a", "a", "b", "b", "a", "a", "b", "b"]
    assert [len(v) for v in times.values()] == [2, 2]


def test_step_gemms_account_for_every_projection_and_head_flop():
    # TINY: D=32, F=64, L=2, q 32, kv 16, V=128; the head runs on rows x (length - 1).
    rows, length = 2, 4
    gemms = step_gemms(TINY, rows, length)
    per_layer = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64
    expected = 6 * 2 * per_layer * rows * length + 6 * 32 * 128 * rows * (length - 1)
    assert sum(g.flops * n for g, n in gemms.items()) == expected
    # each layout in equal FLOPs: forward, input gradient, weight gradient
    by_layout = {lay: sum(g.flops * n for g, n in gemms.items() if g.layout == lay)
                 for lay in ("NN", "NT", "TN")}
    assert by_layout["NN"] == by_layout["NT"] == by_layout["TN"] == expected / 3
    assert gemms[Gemm("NN", rows * length, 32, 16)] == 2 * 2  # k and v, two layers


def test_timed_gemms_compute_the_products_their_layouts_name():
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for gemm in (Gemm("NN", 3, 5, 4), Gemm("NT", 3, 5, 4), Gemm("TN", 3, 5, 4)):
        lhs, rhs = (rng.standard_normal(s).astype(np.float32) for s in gemm.operand_shapes())
        a = lhs.T if gemm.layout == "TN" else lhs
        b = rhs.T if gemm.layout == "NT" else rhs
        assert (a @ b).shape == (gemm.m, gemm.n)
    results = time_gemms(Counter({Gemm("NT", 8, 16, 4): 3, Gemm("TN", 4, 8, 16): 1}), calls=1)
    assert [r["count"] for r in results] == [3, 1]
    assert all(r["xla_s"] > 0 and r["torch_s"] > 0 for r in results)
    total = summarize(results)
    assert total["gemm_seconds_xla"] == pytest.approx(3 * results[0]["xla_s"] + results[1]["xla_s"])
    assert total["gemm_time_ratio"] == pytest.approx(total["gemm_seconds_torch"]
                                                     / total["gemm_seconds_xla"])
