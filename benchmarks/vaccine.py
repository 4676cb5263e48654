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

Bucketed (`accelerated_bucketed_over_sft_time`): the same accelerated step on length
buckets in shuffled order, as a stage feeds it, each bucket's eps stored and reused:
the demo's buckets (48, 64, 80) at batch 8, 4 cycles (--quick: (32, 48, 64) at batch
4, 2 cycles), each cycle every bucket once in a shuffled order. A first pass over the
sequence from a fresh state (compiling each shape) records which steps recomputed eps,
next to the steps where the shape changes (where a single stored eps would have been
recomputed). Then, per step of the sequence, SFT, a reusing step and a recomputing
step (its shape's eps made stale) are timed in turn; the ratio amortises one
recomputing step per 100 steps of each shape: sum((99 * reuse + recompute) / 100) /
sum(sft) over the sequence.

The last line printed is the result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any, Callable

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.train_step import busy_cpu_seconds, make_batch, step_times
from research.models import LoRAConfig, load_pretrained
from research.training.state import init_train_state, split_model
from research.training.steps import make_sft_step
from research.training.vaccine import (make_accelerated_vaccine_step, make_vaccine_step,
                                       prepare_vaccine_state)

ALIAS = "smollm2-135m-instruct"
TAU = 100
SEQUENCE_SEED = 0


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


def build(rows: int, length: int) -> tuple[dict[str, Callable], dict[str, dict[str, int]],
                                          dict[str, Any]]:
    """SFT, Vaccine and accelerated Vaccine runners (warmed up), their memory, and what
    the bucketed timing reuses (model parts, optimiser, the SFT and accelerated steps)."""
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
    mem["accelerated"] = memory(accelerated.lower(state, frozen, batch).compile())
    runners["accelerated"] = runner(accelerated, state, frozen, batch)
    for run in runners.values():
        run()  # warm-up (the accelerated one computes the eps its timed steps reuse)
    parts = {"graphdef": graphdef, "frozen": frozen, "fresh": fresh,
             "sft": steps["sft"], "accelerated": accelerated}
    return runners, mem, parts


def shuffled_shapes(buckets: tuple[int, ...], per_bucket: int, rows: int
                    ) -> list[tuple[int, int]]:
    """`per_bucket` cycles, each every bucket once in a seeded shuffled order: as
    shuffled batches of several buckets, the shape changes on most steps."""
    rng = np.random.default_rng(SEQUENCE_SEED)
    return [(rows, int(length)) for _ in range(per_bucket)
            for length in rng.permutation(np.asarray(buckets))]


def stale(state: Any) -> Any:
    """`state` with its first (most recently used) eps due for recomputation."""
    first, *rest = state.perturbations
    return state._replace(perturbations=(first._replace(age=jnp.asarray(TAU, jnp.int32)),
                                         *rest))


def bucketed(parts: dict[str, Any], buckets: tuple[int, ...], rows: int, per_bucket: int,
             rounds: int) -> dict[str, Any]:
    """Accelerated Vaccine against SFT on a shuffled sequence of length buckets."""
    shapes = shuffled_shapes(buckets, per_bucket, rows)
    batches = [{k: jnp.asarray(v) for k, v in make_batch(49152, r, n, seed=i).items()}
               for i, (r, n) in enumerate(shapes)]
    frozen, fresh, sft, accelerated = (parts[k] for k in ("frozen", "fresh", "sft",
                                                          "accelerated"))
    states = {"sft": fresh(), "reuse": fresh()}
    recomputed = []
    for batch in batches:  # the first pass: compiles each shape, one eps per shape
        states["sft"], _ = sft(states["sft"], frozen, batch)
        states["reuse"], metrics = accelerated(states["reuse"], frozen, batch)
        recomputed.append(int(metrics["eps_recomputed"]))
    states["recompute"] = jax.tree.map(jnp.copy, states["reuse"])
    changes = [int(i == 0 or shapes[i] != shapes[i - 1]) for i in range(len(shapes))]

    graphdef = parts["graphdef"]

    def run(name: str, batch: dict) -> None:
        state = states[name]
        if name == "sft":
            state, metrics = sft(state, frozen, batch)
        else:
            state = prepare_vaccine_state(state, frozen, graphdef, batch, TAU)
            state, metrics = accelerated(stale(state) if name == "recompute" else state,
                                         frozen, batch)
            assert int(metrics["eps_recomputed"]) == (name == "recompute")
        float(metrics["loss"])  # waits for the step
        states[name] = state

    samples: dict[str, list[list[float]]] = {k: [[] for _ in shapes] for k in states}
    names = list(states)
    for r in range(rounds):
        for i, batch in enumerate(batches):
            k = (r + i) % len(names)  # rotate who goes first
            for name in names[k:] + names[:k]:
                start = time.perf_counter()
                run(name, batch)
                samples[name][i].append(time.perf_counter() - start)
    t = {k: [statistics.median(v) for v in per_step] for k, per_step in samples.items()}
    amortised = sum(((TAU - 1) * a + b) / TAU for a, b in zip(t["reuse"], t["recompute"]))
    cfg = nnx.merge(graphdef, states["sft"].params, frozen).config
    stored = sum(rows * cfg.num_layers * n * cfg.hidden_size * 4 for n in buckets)
    return {
        "ratio": ratio(amortised, sum(t["sft"])),
        "reuse_over_sft_time": ratio(sum(t["reuse"]), sum(t["sft"])),
        "recompute_over_sft_time": ratio(sum(t["recompute"]), sum(t["sft"])),
        "buckets": list(buckets), "rows": rows, "sequence": [n for _, n in shapes],
        "first_pass_recomputed": recomputed,
        "recomputed_if_one_stored_eps": changes,
        "stored_eps_bytes": stored, "rounds": rounds,
        "step_s": {k: [round(x, 4) for x in v] for k, v in t.items()},
    }


def ratio(a: float, b: float, digits: int = 3) -> float | None:
    return round(a / b, digits) if b else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="batch 4 x 64, 3 rounds; bucketed: batch 4, buckets (32, 48, "
                             "64), each twice, 1 round")
    args = parser.parse_args(argv)
    rows, length, rounds = (4, 64, 3) if args.quick else (8, 128, 5)
    buckets, b_rows, per_bucket, b_rounds = (((32, 48, 64), 4, 2, 1) if args.quick
                                             else ((48, 64, 80), 8, 4, 2))
    runners, mem, parts = build(rows, length)
    samples, _, other_load = step_times(runners, rounds)
    t = {k: statistics.median(v) for k, v in samples.items()}
    amortised = ((TAU - 1) * t["accelerated"] + t["vaccine"]) / TAU
    busy0, wall0 = busy_cpu_seconds(), time.perf_counter()
    own0 = time.process_time()
    shuffled = bucketed(parts, buckets, b_rows, per_bucket, b_rounds)
    busy1, wall1, own1 = busy_cpu_seconds(), time.perf_counter(), time.process_time()
    if busy0 is not None and busy1 is not None:
        shuffled["other_load_cores"] = round(
            max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0), 2)
    headline = {
        "vaccine_over_sft_time": ratio(t["vaccine"], t["sft"]),
        "vaccine_over_sft_memory": ratio(mem["vaccine"]["peak"], mem["sft"]["peak"], 4),
        "accelerated_over_sft_time": ratio(amortised, t["sft"]),
        "accelerated_bucketed_over_sft_time": shuffled.pop("ratio"),
    }
    extra = {
        "accelerated_reuse_over_sft_time": ratio(t["accelerated"], t["sft"]),
        "vaccine_over_sft_temp_memory": ratio(mem["vaccine"]["temp"], mem["sft"]["temp"], 4),
        "accelerated_over_sft_memory": ratio(mem["accelerated"]["peak"],
                                             mem["sft"]["peak"], 4),
        "step_s": {k: round(v, 4) for k, v in t.items()},
        "step_s_all": {k: [round(x, 4) for x in v] for k, v in samples.items()},
        "memory_bytes": mem, "batch": [rows, length], "rounds": rounds, "tau": TAU,
        "other_load_cores": other_load, "bucketed": shuffled,
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
    print(f"bucketed {tuple(buckets)} at batch {b_rows}, shuffled "
          f"{shuffled['sequence']}: first pass recomputed "
          f"{sum(shuffled['first_pass_recomputed'])} of {len(shuffled['sequence'])} steps "
          f"(one stored eps: {sum(shuffled['recomputed_if_one_stored_eps'])}); amortised "
          f"over tau={TAU}: {headline['accelerated_bucketed_over_sft_time']:.3f} x sft")
    result = headline | extra
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
