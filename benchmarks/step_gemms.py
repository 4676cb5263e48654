"""The matrix multiplies of one full fine-tuning step, timed alone in XLA and in torch.

Why: the step ratio mixes two things, the matmul kernels each framework calls and
everything around them. Timing the step's own GEMMs (same shapes, same transposes,
same count) in both frameworks separates them: `gemm_time_ratio` is the tokens/s ratio
the step would have if it were nothing but its GEMMs. Attention's batched T x T
products (about 3% of the step's FLOPs) are left out.

Layouts: "NN" is x @ W, "NT" is dy @ W.T, "TN" is x.T @ dy, as in the forward pass,
the input gradient and the weight gradient of `y = x @ W`.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.models.config import ModelConfig

_DIMS = {"NN": ((1,), (0,)), "NT": ((1,), (1,)), "TN": ((0,), (0,))}


class Gemm(NamedTuple):
    layout: str  # "NN", "NT" or "TN"
    m: int  # output rows
    k: int  # contracted size
    n: int  # output columns

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n

    def operand_shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        lhs = (self.k, self.m) if self.layout == "TN" else (self.m, self.k)
        rhs = (self.n, self.k) if self.layout == "NT" else (self.k, self.n)
        return lhs, rhs


def step_gemms(cfg: ModelConfig, rows: int, length: int) -> Counter[Gemm]:
    """Each distinct GEMM of one training step with how often it runs.

    Per layer and projection W [d_in, d_out] over N = rows x length tokens: the forward
    x @ W, the input gradient dy @ W.T and the weight gradient x.T @ dy. The output head
    (the tied embedding E [V, D]) runs on the rows that predict a next token,
    rows x (length - 1): logits h @ E.T, dh = dlogits @ E, dE = dlogits.T @ h.
    """
    tokens = rows * length
    d, q, kv = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    projections = [(d, q), (d, kv), (d, kv), (q, d),
                   (d, cfg.intermediate_size), (d, cfg.intermediate_size),
                   (cfg.intermediate_size, d)]
    gemms: Counter[Gemm] = Counter()
    for d_in, d_out in projections:
        gemms[Gemm("NN", tokens, d_in, d_out)] += cfg.num_layers
        gemms[Gemm("NT", tokens, d_out, d_in)] += cfg.num_layers
        gemms[Gemm("TN", d_in, tokens, d_out)] += cfg.num_layers
    predicted = rows * (length - 1)
    gemms[Gemm("NT", predicted, d, cfg.vocab_size)] += 1
    gemms[Gemm("NN", predicted, cfg.vocab_size, d)] += 1
    gemms[Gemm("TN", cfg.vocab_size, predicted, d)] += 1
    return gemms


def _median_seconds(fn, calls: int) -> float:
    fn()  # warm-up (and compilation, for XLA)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_gemms(gemms: Counter[Gemm], calls: int = 7, seed: int = 0) -> list[dict]:
    """Median seconds of each GEMM in XLA and in torch, alternating per shape so that a
    busy moment hits both. float32, torch at its current thread count."""
    import torch

    rng = np.random.default_rng(seed)
    results = []
    for gemm, count in gemms.items():
        lhs, rhs = (rng.standard_normal(s, dtype=np.float32) for s in gemm.operand_shapes())
        dims = (_DIMS[gemm.layout], ((), ()))
        xla = jax.jit(lambda a, b, dims=dims: lax.dot_general(a, b, dims))
        a, b = jnp.asarray(lhs), jnp.asarray(rhs)
        ta, tb = torch.from_numpy(lhs), torch.from_numpy(rhs)
        ta = ta.T if gemm.layout == "TN" else ta
        tb = tb.T if gemm.layout == "NT" else tb
        xla_s = _median_seconds(lambda: xla(a, b).block_until_ready(), calls)
        torch_s = _median_seconds(lambda: torch.mm(ta, tb), calls)
        results.append({"gemm": gemm, "count": count, "xla_s": xla_s, "torch_s": torch_s})
    return results


def summarize(results: list[dict]) -> dict[str, float]:
    """Total seconds per step of all GEMMs in each framework, and torch / XLA."""
    xla = sum(r["xla_s"] * r["count"] for r in results)
    torch_total = sum(r["torch_s"] * r["count"] for r in results)
    return {"gemm_seconds_xla": xla, "gemm_seconds_torch": torch_total,
            "gemm_time_ratio": torch_total / xla}


def print_gemm_table(results: list[dict]) -> None:
    print(f"\nThe step's GEMMs alone (float32, median of each; torch/XLA > 1: XLA faster)")
    print(f"{'layout':<7}{'M x K x N':>22}{'count':>7}{'XLA GF/s':>10}{'torch GF/s':>12}"
          f"{'torch/XLA':>11}")
    for r in sorted(results, key=lambda r: -r["gemm"].flops * r["count"]):
        g = r["gemm"]
        print(f"{g.layout:<7}{f'{g.m} x {g.k} x {g.n}':>22}{r['count']:>7}"
              f"{g.flops / r['xla_s'] / 1e9:>10.0f}{g.flops / r['torch_s'] / 1e9:>12.0f}"
              f"{r['torch_s'] / r['xla_s']:>11.2f}")
