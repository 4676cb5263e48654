"""Self-Inf scoring throughput: vmapped chunks against a per-example loop of jitted grads.

    python -m benchmarks.self_influence [--quick] [--mode lora|full]

Scores a benign pool (the project's arithmetic, sentiment and topic task examples in the
chat template, response-only loss) on the embedded SmolLM2-135M-Instruct. Default
parameter subset: LoRA r=8 on q,k,v,o,gate,up,down (the study's setting; 2.4M parameters,
so a chunk's per-example gradients are small); `--mode full` differentiates all 135M base
weights instead (per-example gradients of 540 MB each, so use small chunks).

Both paths use the same bucketed right padding, so they do identical arithmetic per
example; the loop calls a jitted single-example scorer once per example. Compilation is
excluded (one warm-up pass each); the two paths are then timed in alternating rounds so
load from other processes on a shared CPU hits both alike, and each reports its median
round. The scores of both paths are compared as a correctness check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Sequence

import jax
import numpy as np

from research.data.chat import ChatExample, format_examples
from research.data.sources import load_source
from research.models import LoRAConfig, load_pretrained
from research.outliers.self_influence import (Scorer, make_scorer, make_single_scorer,
                                              score_examples)
from research.training.state import split_model

ALIAS = "smollm2-135m-instruct"
BUCKETS = (64, 96)
MAX_LENGTH = 96


def benign_pool(tokenizer, n: int) -> list[ChatExample]:
    """n task examples, a third from each suite, in the chat template."""
    rows = []
    for name in ("arithmetic", "sentiment", "topic"):
        rows += load_source(name, limit=-(-n // 3))[0]
    examples, _ = format_examples(tokenizer, rows[:n], max_length=MAX_LENGTH)
    return examples


def time_pass(scorer: Scorer, state, examples: Sequence[ChatExample], chunk: int,
              pad_id: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    scores = score_examples(scorer, *state, examples, chunk_size=chunk, pad_id=pad_id,
                            buckets=BUCKETS)
    return time.perf_counter() - start, scores.self_inf


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer examples, one round")
    parser.add_argument("--mode", choices=("lora", "full"), default="lora")
    parser.add_argument("--chunk", type=int, default=None, help="examples per vmapped chunk")
    args = parser.parse_args(argv)
    n, rounds = (12, 1) if args.quick else (24, 2)
    chunk = args.chunk or (4 if args.mode == "lora" else 2)  # 4 beat 8 here: fewer empty rows

    model, tokenizer = load_pretrained(ALIAS, lora=LoRAConfig(rank=8))
    graphdef, trainable, frozen = split_model(model, args.mode)
    state = (trainable, frozen)
    examples = benign_pool(tokenizer, n)
    pad = tokenizer.pad_token_id
    n_params = sum(x.size for x in jax.tree.leaves(trainable))
    paths = {"vmap": (make_scorer(graphdef), chunk), "loop": (make_single_scorer(graphdef), 1)}

    compile_s, times, scores = {}, {k: [] for k in paths}, {}
    for name, (scorer, c) in paths.items():  # warm-up: compiles every bucket
        compile_s[name], scores[name] = time_pass(scorer, state, examples, c, pad)
    for _ in range(rounds):
        for name, (scorer, c) in paths.items():
            elapsed, _ = time_pass(scorer, state, examples, c, pad)
            times[name].append(elapsed)

    rate = {k: len(examples) / statistics.median(v) for k, v in times.items()}
    rel_diff = float(np.max(np.abs(scores["vmap"] - scores["loop"]) /
                            np.maximum(np.abs(scores["loop"]), 1e-30)))
    lengths = [len(e) for e in examples]
    print(f"Self-Inf scoring, {ALIAS}, mode={args.mode} ({n_params / 1e6:.2f}M params "
          f"differentiated), {len(examples)} examples of {min(lengths)}-{max(lengths)} tokens "
          f"(buckets {BUCKETS}), {rounds} round(s), {jax.devices()[0].platform}")
    print(f"{'path':<28}{'examples/s':>12}{'median s':>11}{'first pass s':>14}")
    labels = {"vmap": f"vmap, chunks of {chunk}", "loop": "loop of jitted single grads"}
    for name in paths:
        print(f"{labels[name]:<28}{rate[name]:>12.2f}{statistics.median(times[name]):>11.2f}"
              f"{compile_s[name]:>14.2f}")
    ratio = rate["vmap"] / rate["loop"]
    print(f"vmap / loop throughput: {ratio:.2f}x (target >= 2); "
          f"max relative score difference {rel_diff:.2e}")
    result = {"vmap_over_loop_throughput": round(ratio, 3),
              "vmap_examples_per_s": round(rate["vmap"], 3),
              "loop_examples_per_s": round(rate["loop"], 3),
              "mode": args.mode, "chunk": chunk, "examples": len(examples),
              "params_differentiated": int(n_params), "max_rel_score_diff": rel_diff,
              "quick": args.quick}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
