"""The matrix multiplies of one full fine-tuning step, timed alone in XLA and in torch.

Why: the step ratio mixes two things, the matmul kernels each framework calls and
everything around them. Timing each framework's own GEMMs of the step (its shapes, its
transposes, how often each runs) separates them: `gemm_time_ratio` is the tokens/s ratio
the two steps would have if they were nothing but their GEMMs. Attention's batched T x T
products (about 3% of the step's FLOPs) are left out, and so is remat's recomputation.

Layouts: "NN" is a @ b, "NT" is a @ b.T, "TN" is a.T @ b. For `y = x @ W` the forward,
input gradient and weight gradient take different layouts depending on how W is stored:
[in, out] here, [out, in] in torch's `nn.Linear` (and in any tied embedding, [V, D]).
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.timing import call_seconds, set_torch_threads
from research.models.config import ModelConfig

Layout = Literal["NN", "NT", "TN"]
WeightLayout = Literal["in_out", "out_in"]
_DIMS = {"NN": ((1,), (0,)), "NT": ((1,), (1,)), "TN": ((0,), (0,))}


class Gemm(NamedTuple):
    layout: Layout
    m: int  # output rows
    k: int  # contracted size
    n: int  # output columns

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n

    @property
    def operand_shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        lhs = (self.k, self.m) if self.layout == "TN" else (self.m, self.k)
        rhs = (self.n, self.k) if self.layout == "NT" else (self.k, self.n)
        return lhs, rhs


def linear_gemms(rows: int, d_in: int, d_out: int, weights: WeightLayout
                 ) -> tuple[Gemm, Gemm, Gemm]:
    """Forward, input gradient and weight gradient of `y = x @ W` over `rows` rows."""
    if weights == "in_out":  # W [in, out]: x @ W, dy @ W.T, dW = x.T @ dy
        return (Gemm("NN", rows, d_in, d_out), Gemm("NT", rows, d_out, d_in),
                Gemm("TN", d_in, rows, d_out))
    # W [out, in]: x @ W.T, dy @ W, dW = dy.T @ x
    return (Gemm("NT", rows, d_in, d_out), Gemm("NN", rows, d_out, d_in),
            Gemm("TN", d_out, rows, d_in))


class StepGemm(NamedTuple):
    """One product of the step as each framework runs it."""
    jax: Gemm
    torch: Gemm


def step_gemms(cfg: ModelConfig, rows: int, length: int) -> Counter[StepGemm]:
    """Each distinct GEMM of one full fine-tuning step, with how often it runs.

    JAX: this project's step (projections stored [in, out]; the head runs only on the
    rows x (length - 1) positions that predict a token). torch: transformers' step
    (`nn.Linear` weights [out, in]; logits for all rows x length positions).
    """
    tokens = rows * length
    steps: Counter[StepGemm] = Counter()
    for d_in, d_out in cfg.projection_shapes.values():
        for pair in zip(linear_gemms(tokens, d_in, d_out, "in_out"),
                        linear_gemms(tokens, d_in, d_out, "out_in")):
            steps[StepGemm(*pair)] += cfg.num_layers
    d, v = cfg.hidden_size, cfg.vocab_size
    jax_head = linear_gemms(rows * (length - 1), d, v,
                            "out_in" if cfg.tie_word_embeddings else "in_out")
    for pair in zip(jax_head, linear_gemms(tokens, d, v, "out_in")):
        steps[StepGemm(*pair)] += 1
    return steps


def framework_gemms(steps: Counter[StepGemm], framework: Literal["jax", "torch"]
                    ) -> Counter[Gemm]:
    """One framework's side of `step_gemms`: its GEMMs and their counts."""
    gemms: Counter[Gemm] = Counter()
    for pair, count in steps.items():
        gemms[getattr(pair, framework)] += count
    return gemms


def gemm_operands(gemm: Gemm, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return tuple(rng.standard_normal(s, dtype=np.float32) for s in gemm.operand_shapes)


def xla_product(gemm: Gemm) -> Callable[[jax.Array, jax.Array], jax.Array]:
    return jax.jit(lambda a, b: lax.dot_general(a, b, (_DIMS[gemm.layout], ((), ()))))


def torch_product(gemm: Gemm) -> Callable:
    import torch

    def product(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
        return torch.mm(a.T if gemm.layout == "TN" else a, b.T if gemm.layout == "NT" else b)
    return product


class GemmTiming(NamedTuple):
    gemm: StepGemm
    count: int
    xla_s: float  # median seconds of one call
    torch_s: float


def time_step_gemms(cfg: ModelConfig, rows: int, length: int, calls: int = 7,
                    torch_threads: int | None = None, seed: int = 0
                    ) -> list[GemmTiming]:
    """Each of the step's products timed in both frameworks, alternately per product so
    that a busy moment hits both. float32; torch at `torch_threads` (default: its
    current count), restored afterwards."""
    import torch

    rng = np.random.default_rng(seed)
    timings = []
    with set_torch_threads(torch_threads):
        for pair, count in step_gemms(cfg, rows, length).items():
            a, b = (jnp.asarray(x) for x in gemm_operands(pair.jax, rng))
            ta, tb = (torch.from_numpy(x) for x in gemm_operands(pair.torch, rng))
            xla, reference = xla_product(pair.jax), torch_product(pair.torch)
            xla_s = statistics.median(call_seconds(lambda: xla(a, b).block_until_ready(), calls))
            torch_s = statistics.median(call_seconds(lambda: reference(ta, tb), calls))
            timings.append(GemmTiming(pair, count, xla_s, torch_s))
    return timings


def summarize(timings: list[GemmTiming]) -> dict[str, float]:
    """Seconds per step of all GEMMs in each framework, and torch / XLA."""
    xla = sum(t.xla_s * t.count for t in timings)
    reference = sum(t.torch_s * t.count for t in timings)
    return {"gemm_seconds_xla": xla, "gemm_seconds_torch": reference,
            "gemm_time_ratio": reference / xla}


def print_gemm_table(timings: list[GemmTiming]) -> None:
    print("\nEach step's GEMMs alone, paired by role (float32, medians; torch/XLA > 1: XLA "
          "faster)")
    print(f"{'JAX':<6}{'M x K x N':>22}{'torch':>7}{'count':>7}{'XLA GF/s':>10}"
          f"{'torch GF/s':>12}{'torch/XLA':>11}")
    for t in sorted(timings, key=lambda t: -t.gemm.jax.flops * t.count):
        g = t.gemm.jax
        print(f"{g.layout:<6}{f'{g.m} x {g.k} x {g.n}':>22}{t.gemm.torch.layout:>7}"
              f"{t.count:>7}{g.flops / t.xla_s / 1e9:>10.0f}"
              f"{t.gemm.torch.flops / t.torch_s / 1e9:>12.0f}{t.torch_s / t.xla_s:>11.2f}")
