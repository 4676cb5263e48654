"""Vaccine step cost against the SFT step, same process, same batch, embedded model.

    python -m benchmarks.vaccine [--quick]

LoRA r=8 on all targets (the paper's protocol), AdamW, clipping at 1.0. Steps are timed
in alternating rounds (median per side) so load from other processes hits both alike.
Memory is XLA's compiled peak (arguments + outputs + temporaries - aliased) per step.
The accelerated variant recomputes eps every tau = 100 steps: its timed steps reuse
the eps computed during warm-up, as 99 of every 100 steps do.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.train_step import make_batch, step_times
from research.models import LoRAConfig, load_pretrained
from research.training.state import init_train_state, split_model
from research.training.steps import make_train_step, sft_grad_fn
from research.training.vaccine import AcceleratedVaccineStep, vaccine_grad_fn

ALIAS = "smollm2-135m-instruct"


def step_runner(method: str, batch: dict[str, np.ndarray]) -> tuple[Callable, int]:
    """A zero-argument callable running one real step, and its XLA peak bytes."""
    model, _ = load_pretrained(ALIAS, lora=LoRAConfig(rank=8), with_tokenizer=False)
    graphdef, params, frozen = split_model(model, "lora")
    opt = optax.adamw(1e-3, weight_decay=0.1)
    holder = {"state": init_train_state(params, opt, seed=0)}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    if method == "accelerated":
        step = AcceleratedVaccineStep(graphdef, opt, rho=2.0, tau=100)

        def run_accelerated() -> float:
            holder["state"], metrics = step(holder["state"], frozen, batch)
            return float(metrics["loss"])

        run_accelerated()  # warm-up; computes the eps that the next 99 steps reuse
        return run_accelerated, 0
    grad_fn = (vaccine_grad_fn(graphdef, rho=2.0) if method == "vaccine"
               else sft_grad_fn(graphdef))
    step = make_train_step(grad_fn, opt, clip_norm=1.0)
    compiled = step.lower(holder["state"], frozen, batch).compile()
    mem = compiled.memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes) if mem is not None else 0

    def run() -> float:
        holder["state"], metrics = compiled(holder["state"], frozen, batch)
        return float(metrics["loss"])

    run()  # warm-up
    return run, int(peak)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="batch 4 x 64, 3 rounds")
    args = parser.parse_args(argv)
    rows, length, rounds = (4, 64, 3) if args.quick else (8, 128, 5)
    batch = make_batch(49152, rows, length)
    sft, sft_peak = step_runner("sft", batch)
    vaccine, vaccine_peak = step_runner("vaccine", batch)
    accelerated, _ = step_runner("accelerated", batch)
    times = {k: statistics.median(v) for k, v in step_times(
        {"sft": sft, "vaccine": vaccine, "accelerated": accelerated}, rounds).items()}
    result = {
        "vaccine_over_sft_time": round(times["vaccine"] / times["sft"], 3),
        "vaccine_over_sft_memory": round(vaccine_peak / sft_peak, 4) if sft_peak else None,
        "accelerated_over_sft_time": round(times["accelerated"] / times["sft"], 3),
        "sft_step_s": round(times["sft"], 3), "vaccine_step_s": round(times["vaccine"], 3),
        "sft_peak_bytes": sft_peak, "vaccine_peak_bytes": vaccine_peak,
        "batch": [rows, length], "rounds": rounds,
    }
    print(f"SmolLM2-135M, LoRA r=8, batch {rows} x {length}, median of {rounds} rounds")
    print(f"{'step':10s} {'time/step':>10s} {'XLA peak':>12s}")
    print(f"{'sft':10s} {times['sft']:9.2f}s {sft_peak / 2**30:10.2f}GiB")
    print(f"{'vaccine':10s} {times['vaccine']:9.2f}s {vaccine_peak / 2**30:10.2f}GiB")
    print(f"{'tau=100':10s} {times['accelerated']:9.2f}s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
