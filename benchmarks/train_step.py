"""Training-step speed of `sft_step` against transformers + torch AdamW, same process.

    python -m benchmarks.train_step [--quick]

Full fine-tuning of the embedded SmolLM2-135M-Instruct on one batch (8 x 128 tokens),
AdamW with global-norm clipping at 1.0 on both sides. The JAX and torch steps are timed
in alternating rounds so that load from other processes on a shared CPU hits both
alike; in each round every step runs once untimed and then once timed (the step after a
switch of framework is slow for both), and each side reports its median timed step.
Torch is timed with its default thread count and with one thread, and the faster is
the reference: with a core taken by another process, torch's OpenMP threads wait on
each other at every parallel region (a 2-thread step measured 5-8x slower than a
1-thread one), which would flatter JAX.
`other_load_cores` is the mean CPU use of other processes while timing (from
/proc/stat); rerun when it is well above 0 for figures you report.
The JAX steps get the batch as the training pipeline makes it, with `loss_rows`, so
their output head unembeds only the 768 positions that predict a response token, where
transformers computes logits at all 1024 (as its training does); `--all-positions`
feeds them every position instead.

Also: the LoRA (r=8, all targets) step, peak memory, and the achieved model FLOP/s of
the full step as a fraction of this CPU's measured float32 matmul FLOP/s (the best rate
of XLA or torch on a square matmul, re-measured in every round so a busy moment cannot
lower it). And each framework's GEMMs of the step timed alone (`step_gemms`):
`gemm_time_ratio` is the ratio two steps made of nothing but their matmuls would have,
which separates the matmul kernels each framework calls from the work around them.

Model FLOPs follow the usual accounting (MaxText's performance_metrics): 6 x matmul
parameters x tokens for the projections and the (tied) output head, plus
3 x 4 x B x T^2 x heads x head_dim per layer for attention scores and values; the
embedding lookup, norms and softmax are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.step_gemms import print_gemm_table, summarize, time_step_gemms
from benchmarks.timing import with_torch_threads
from research.data.batches import with_loss_rows
from research.models import LoRAConfig, load_pretrained
from research.models.config import ModelConfig
from research.models.loading import embedded_folder
from research.training.state import init_train_state, split_model
from research.training.steps import make_sft_step

ALIAS = "smollm2-135m-instruct"
LR, WEIGHT_DECAY, CLIP = 1e-5, 0.01, 1.0


def make_batch(vocab: int, rows: int, length: int, seed: int = 0,
               all_positions: bool = False) -> dict[str, np.ndarray]:
    """Random tokens, no padding, the last 3/4 of each row as the response; with
    `loss_rows` as training batches carry them, unless `all_positions`."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(rows, length)).astype(np.int32)
    loss = np.zeros((rows, length), bool)
    loss[:, length // 4:] = True
    batch = {"tokens": tokens, "attention_mask": np.ones((rows, length), bool),
             "loss_mask": loss}
    return batch if all_positions else with_loss_rows(batch)


def model_flops_per_step(cfg: ModelConfig, rows: int, length: int,
                         head_positions: int | None = None) -> float:
    """Training FLOPs (forward + backward) of one step, by the accounting above; with
    `head_positions`, the output head's counted at only that many positions (the FLOPs
    a step that unembeds only `loss_rows` executes)."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
    tokens = rows * length
    head = tokens if head_positions is None else head_positions
    attention = 3 * 4 * rows * length * length * q * cfg.num_layers
    return (6.0 * cfg.num_layers * per_layer * tokens + 6.0 * d * cfg.vocab_size * head
            + attention)


MATMUL_SIZE = 2048


def matmul_runners(size: int = MATMUL_SIZE) -> dict[str, Callable]:
    """Square float32 matmuls in XLA and in torch, timed alongside the steps; the best
    observed rate over all rounds is taken as this CPU's matmul peak."""
    import torch

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    t = torch.randn(size, size)
    torch.mm(t, t)

    def xla() -> None:
        for _ in range(3):
            mm(a).block_until_ready()

    def reference() -> None:
        for _ in range(3):
            torch.mm(t, t)

    return {"matmul_xla": xla, "matmul_torch": reference}


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall seconds of one call, and the process's system (OS kernel) CPU seconds in it."""
    system, start = os.times().system, time.perf_counter()
    fn()
    return time.perf_counter() - start, os.times().system - system


def jax_step_runner(mode: str, batch: dict[str, np.ndarray], remat: bool = False
                    ) -> tuple[Callable, dict]:
    """A zero-argument callable running one real `sft_step`, plus its memory figures."""
    lora = LoRAConfig(rank=8) if mode == "lora" else None
    model, _ = load_pretrained(ALIAS, lora=lora, with_tokenizer=False)
    graphdef, params, frozen = split_model(model, mode)
    del model
    opt = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    step = make_sft_step(graphdef, opt, clip_norm=CLIP, remat=remat)
    holder = {"state": init_train_state(params, opt, seed=0)}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    compiled = step.lower(holder["state"], frozen, batch).compile()
    mem = compiled.memory_analysis()
    memory = {}
    if mem is not None:
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
        memory = {"xla_step_peak_bytes": int(peak), "xla_temp_bytes": int(mem.temp_size_in_bytes)}

    def run() -> float:
        holder["state"], metrics = compiled(holder["state"], frozen, batch)
        return float(metrics["loss"])

    run()  # warm-up
    return run, memory


def torch_step_runner(batch: dict[str, np.ndarray]) -> Callable:
    """One transformers full fine-tuning step with torch AdamW (the reference)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_folder(ALIAS), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    tokens = torch.from_numpy(batch["tokens"]).long()
    attention = torch.from_numpy(batch["attention_mask"]).long()
    labels = tokens.masked_fill(~torch.from_numpy(batch["loss_mask"]), -100)

    def run() -> float:
        loss = model(input_ids=tokens, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    run()  # warm-up
    return run


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have used (non-idle time in /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


class StepTimes(NamedTuple):
    seconds: dict[str, list[float]]  # wall seconds per timed call, by runner
    system_seconds: dict[str, list[float]]  # system (OS kernel) CPU seconds in those calls
    other_load_cores: float | None  # mean cores other processes kept busy (None: unknown)


def step_times(runners: dict[str, Callable], rounds: int, *, settle: bool = False) -> StepTimes:
    """Each runner timed in alternating rounds, with the system CPU time it spent and the
    load of other processes meanwhile.

    System time (page faults, thread wake-ups, memory mapping) is reported because a
    step's time can move with it between runs on an otherwise quiet machine.

    With `settle`, each runner is called once untimed before its timed call in every
    round. Why: the first step after the other framework ran is slow for reasons that
    belong to the switch, not to either step (on a 2-core AVX-512 CPU a JAX step right
    after a torch step took 5.0-6.1 s against 4.5 s in a row), while a training run only
    ever runs one framework.
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    system: dict[str, list[float]] = {name: [] for name in runners}
    busy0, own0, wall0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    for _ in range(rounds):
        for name, run in runners.items():
            if settle:
                run()
            wall, in_system = _timed(run)
            times[name].append(wall)
            system[name].append(in_system)
    busy1, own1, wall1 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    others = None
    if busy0 is not None and busy1 is not None:
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    return StepTimes(times, system, others)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed rounds")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--all-positions", action="store_true",
                        help="feed the JAX steps without loss_rows: unembed every position")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 7

    model, _ = load_pretrained(ALIAS, with_tokenizer=False)
    cfg = model.config
    del model
    batch = make_batch(cfg.vocab_size, args.rows, args.length, all_positions=args.all_positions)
    tokens = args.rows * args.length
    head_positions = batch["loss_rows"].size if "loss_rows" in batch else tokens

    jax_full, jax_memory = jax_step_runner("full", batch)
    jax_remat, remat_memory = jax_step_runner("full", batch, remat=True)
    import torch

    torch_threads = torch.get_num_threads()
    torch_full = torch_step_runner(batch)
    torch_runners = {"torch_full": torch_full}
    if torch_threads > 1:
        torch_runners["torch_full_1_thread"] = with_torch_threads(torch_full, 1)
    jax_lora, lora_memory = jax_step_runner("lora", batch)
    raw, raw_system, other_load = step_times(
        {"jax_full": jax_full, "jax_full_remat": jax_remat, **torch_runners,
         "jax_lora": jax_lora, **matmul_runners()}, rounds, settle=True)
    times = {name: statistics.median(ts) for name, ts in raw.items()}
    peak = {name: 3 * 2.0 * MATMUL_SIZE ** 3 / min(raw[name])
            for name in ("matmul_xla", "matmul_torch")}
    best_jax = min(("jax_full", "jax_full_remat"), key=times.get)
    best_torch = min(torch_runners, key=times.get)
    times["torch_best"] = times[best_torch]
    gemms = time_step_gemms(cfg, args.rows, args.length, calls=3 if args.quick else 7,
                            torch_threads=1 if best_torch == "torch_full_1_thread" else None)

    flops = model_flops_per_step(cfg, args.rows, args.length)
    cpu_peak = max(peak.values())
    result = {
        "sft_tokens_per_s_ratio": times["torch_best"] / times[best_jax],
        "sft_config": "remat" if best_jax == "jax_full_remat" else "no remat",
        "sft_tokens_per_s": tokens / times[best_jax],
        "sft_no_remat_tokens_per_s_ratio": times["torch_best"] / times["jax_full"],
        "sft_remat_tokens_per_s_ratio": times["torch_best"] / times["jax_full_remat"],
        "torch_tokens_per_s": tokens / times["torch_best"],
        "torch_config": ("1 thread" if best_torch == "torch_full_1_thread"
                         else f"{torch_threads} threads"),
        "torch_default_threads_tokens_per_s": tokens / times["torch_full"],
        "torch_1_thread_tokens_per_s": (tokens / times["torch_full_1_thread"]
                                        if "torch_full_1_thread" in times else None),
        "other_load_cores": other_load,
        "sft_system_cpu_seconds_per_step": statistics.median(raw_system[best_jax]),
        "torch_system_cpu_seconds_per_step": statistics.median(raw_system[best_torch]),
        "lora_tokens_per_s": tokens / times["jax_lora"],
        "flops_fraction_of_matmul_peak": flops / times[best_jax] / cpu_peak,
        "sft_head_positions": head_positions,
        "sft_executed_flops_fraction_of_matmul_peak": (
            model_flops_per_step(cfg, args.rows, args.length, head_positions)
            / times[best_jax] / cpu_peak),
        "torch_flops_fraction_of_matmul_peak": flops / times["torch_best"] / cpu_peak,
        "model_flops_per_step": flops,
        **summarize(gemms),
        "matmul_peak_flops_xla": peak["matmul_xla"],
        "matmul_peak_flops_torch": peak["matmul_torch"],
        "sft_step_peak_bytes_xla": jax_memory.get("xla_step_peak_bytes"),
        "sft_remat_step_peak_bytes_xla": remat_memory.get("xla_step_peak_bytes"),
        "lora_step_peak_bytes_xla": lora_memory.get("xla_step_peak_bytes"),
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "batch": [args.rows, args.length],
        "rounds": rounds,
    }
    print_gemm_table(gemms)
    print_table(result, times)
    print(json.dumps(result))
    return result


def print_table(r: dict[str, Any], times: dict[str, float]) -> None:
    gib = 2.0 ** 30

    def tokens(seconds: float) -> float:
        return r["batch"][0] * r["batch"][1] / seconds

    rows = [
        ("JAX sft_step, full FT (AdamW)", f"{times['jax_full']:.2f} s",
         f"{tokens(times['jax_full']):.0f}"),
        ("JAX sft_step, full FT, remat", f"{times['jax_full_remat']:.2f} s",
         f"{tokens(times['jax_full_remat']):.0f}"),
        ("torch + transformers, full FT (AdamW)", f"{times['torch_full']:.2f} s",
         f"{tokens(times['torch_full']):.0f}"),
        *([("  same, torch 1 thread", f"{times['torch_full_1_thread']:.2f} s",
            f"{tokens(times['torch_full_1_thread']):.0f}")]
          if "torch_full_1_thread" in times else []),
        ("JAX sft_step, LoRA r=8", f"{times['jax_lora']:.2f} s", f"{r['lora_tokens_per_s']:.0f}"),
    ]
    print(f"\nTraining step, SmolLM2-135M, batch {r['batch'][0]} x {r['batch'][1]}, "
          f"median of {r['rounds']} alternating rounds, "
          f"each step timed after an untimed one")
    print(f"{'step':<40}{'time/step':>12}{'tokens/s':>12}")
    for name, t, tps in rows:
        print(f"{name:<40}{t:>12}{tps:>12}")
    print(f"\nsft tokens/s ratio (JAX, {r['sft_config']} / torch, {r['torch_config']}): "
          f"{r['sft_tokens_per_s_ratio']:.2f}  (target >= 1.2; no remat "
          f"{r['sft_no_remat_tokens_per_s_ratio']:.2f}, remat {r['sft_remat_tokens_per_s_ratio']:.2f})")
    print(f"matmul peak: XLA {r['matmul_peak_flops_xla'] / 1e9:.1f} GFLOP/s, "
          f"torch {r['matmul_peak_flops_torch'] / 1e9:.1f} GFLOP/s")
    print(f"each step's GEMMs alone: XLA {r['gemm_seconds_xla']:.2f} s, torch "
          f"{r['gemm_seconds_torch']:.2f} s per step; torch/XLA {r['gemm_time_ratio']:.2f}, "
          f"the ratio a GEMM-only step would have")
    print(f"model FLOP/s fraction of matmul peak: JAX {r['flops_fraction_of_matmul_peak']:.2f}, "
          f"torch {r['torch_flops_fraction_of_matmul_peak']:.2f}; JAX executed "
          f"{r['sft_executed_flops_fraction_of_matmul_peak']:.2f} (its head unembeds "
          f"{r['sft_head_positions']} of {r['batch'][0] * r['batch'][1]} positions)")
    if r["sft_step_peak_bytes_xla"]:
        print(f"XLA step peak (args + temps + outputs - donated): full "
              f"{r['sft_step_peak_bytes_xla'] / gib:.2f} GiB, LoRA "
              f"{r['lora_step_peak_bytes_xla'] / gib:.2f} GiB")
    print(f"process peak RSS (both frameworks loaded): {r['process_peak_rss_bytes'] / gib:.2f} GiB")
    print(f"system (OS kernel) CPU seconds per step: JAX "
          f"{r['sft_system_cpu_seconds_per_step']:.2f}, torch "
          f"{r['torch_system_cpu_seconds_per_step']:.2f}")
    if r["other_load_cores"] is not None:
        print(f"other processes kept {r['other_load_cores']:.2f} cores busy while timing")


if __name__ == "__main__":
    main()
