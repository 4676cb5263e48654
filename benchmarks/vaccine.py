"""Vaccine step cost against the SFT step, same process, same batch, embedded model.

    python -m benchmarks.vaccine [--quick]

LoRA r=8 on all targets (the paper's protocol), AdamW, clipping at 1.0, one model
loaded once and split once. Steps are timed in alternating rounds (median per side) so
load from other processes hits all alike. Memory is XLA's compiled peak per step
(arguments + outputs + temporaries - aliased), also shown as temporaries alone, since
the frozen base weights (an argument of every step) are a large part of the peak.
Accelerated (tau = 100): its timed steps reuse eps (lax.cond skips pass 1), as 99 of
every 100 steps do; the reported ratio amortises one recomputing step (a full Vaccine
step) over the 100: (99 * reuse + vaccine) / 100 / sft.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks.train_step import make_batch, step_times
from research.models import LoRAConfig, load_pretrained
from research.training.state import init_train_state, split_model
from research.training.steps import make_sft_step
from research.training.vaccine import (make_accelerated_vaccine_step, make_vaccine_step,
                                       prepare_vaccine_state)

ALIAS = "smollm2-135m-instruct"
TAU = 100


def memory(compiled: Any) -> dict[str, int]:
    """XLA's compiled memory figures of one step (bytes)."""
    m = compiled.memory_analysis()
    if m is None:
        return {"peak": 0, "temp": 0}
    peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)
    return {"peak": int(peak), "temp": int(m.temp_size_in_bytes)}


def runner(step: Callable, state: Any, frozen: nnx.State, batch: dict) -> Callable[[], float]:
    """A zero-argument callable running one real step (the state threads through)."""
    holder = {"state": state}

    def run() -> float:
        holder["state"], metrics = step(holder["state"], frozen, batch)
        return float(metrics["loss"])
    return run


def build(rows: int, length: int) -> tuple[dict[str, Callable], dict[str, dict[str, int]]]:
    """SFT, Vaccine and accelerated Vaccine runners (warmed up) and their memory."""
    model, _ = load_pretrained(ALIAS, lora=LoRAConfig(rank=8), with_tokenizer=False)
    graphdef, params, frozen = split_model(model, "lora")
    del model
    batch = {k: jnp.asarray(v) for k, v in make_batch(49152, rows, length).items()}
    opt = optax.adamw(1e-3, weight_decay=0.1)
    fresh = lambda: init_train_state(jax.tree.map(jnp.copy, params), opt, seed=0)  # noqa
    steps = {"sft": make_sft_step(graphdef, opt, clip_norm=1.0),
             "vaccine": make_vaccine_step(graphdef, opt, rho=2.0, clip_norm=1.0)}
    runners, mem = {}, {}
    for name, step in steps.items():
        compiled = step.lower(fresh(), frozen, batch).compile()
        mem[name] = memory(compiled)
        runners[name] = runner(compiled, fresh(), frozen, batch)
    accelerated = make_accelerated_vaccine_step(graphdef, opt, rho=2.0, tau=TAU)
    state = prepare_vaccine_state(fresh(), frozen, graphdef, batch, TAU)
    mem["accelerated"] = memory(accelerated.jitted.lower(state, frozen, batch).compile())
    runners["accelerated"] = runner(accelerated, state, frozen, batch)
    for run in runners.values():
        run()  # warm-up (the accelerated one computes the eps its timed steps reuse)
    return runners, mem


def ratio(a: float, b: float, digits: int = 3) -> float | None:
    return round(a / b, digits) if b else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4 x 64, 3 rounds")
    args = parser.parse_args(argv)
    rows, length, rounds = (4, 64, 3) if args.quick else (8, 128, 5)
    runners, mem = build(rows, length)
    samples, _, other_load = step_times(runners, rounds)
    t = {k: statistics.median(v) for k, v in samples.items()}
    amortised = ((TAU - 1) * t["accelerated"] + t["vaccine"]) / TAU
    headline = {
        "vaccine_over_sft_time": ratio(t["vaccine"], t["sft"]),
        "vaccine_over_sft_memory": ratio(mem["vaccine"]["peak"], mem["sft"]["peak"], 4),
        "accelerated_over_sft_time": ratio(amortised, t["sft"]),
    }
    extra = {
        "accelerated_reuse_over_sft_time": ratio(t["accelerated"], t["sft"]),
        "vaccine_over_sft_temp_memory": ratio(mem["vaccine"]["temp"], mem["sft"]["temp"], 4),
        "accelerated_over_sft_memory": ratio(mem["accelerated"]["peak"],
                                             mem["sft"]["peak"], 4),
        "step_s": {k: round(v, 4) for k, v in t.items()},
        "step_s_all": {k: [round(x, 4) for x in v] for k, v in samples.items()},
        "memory_bytes": mem, "batch": [rows, length], "rounds": rounds, "tau": TAU,
        "other_load_cores": other_load,
    }
    print(f"SmolLM2-135M, LoRA r=8, batch {rows} x {length}, median of {rounds} "
          f"alternating rounds, {jax.devices()[0].platform}")
    print(f"{'step':22s} {'time/step':>10s} {'ratio':>7s} {'XLA peak':>10s} {'ratio':>7s} "
          f"{'temp':>9s}")
    for name, label in (("sft", "sft"), ("vaccine", "vaccine"),
                        ("accelerated", f"accelerated tau={TAU}")):
        print(f"{label:22s} {t[name]:9.3f}s {t[name] / t['sft']:7.3f} "
              f"{mem[name]['peak'] / 2**20:8.1f}MB {mem[name]['peak'] / mem['sft']['peak']:7.4f} "
              f"{mem[name]['temp'] / 2**20:7.1f}MB")
    print(f"accelerated, amortised over tau={TAU} (one recomputing step): "
          f"{headline['accelerated_over_sft_time']:.3f} x sft")
    result = headline | extra
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
