"""Evaluate a model's safety and usefulness from the command line.

    python -m research.evaluate --model SOURCE [--harmful FILE] [--benign FILE]
        [--task NAME] [--prefix TEXT] [--max-new-tokens N] [--limit N] --out DIR

SOURCE is anything `load_pretrained` takes. --harmful/--benign take a prompt file
(.txt a prompt a line, .jsonl field `prompt`, .csv column `prompt`, .parquet; --field
renames it) or registered source names, comma-separated; a registered source is cut to
its --split (content-hash split, default test) so training data never leaks in.
Writes DIR/results.json ({label: metrics with CIs, refusal list version, settings,
counts, timing}) and DIR/records.jsonl (one line per prompt) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from research.data.rows import DataError, Row
from research.data.sources import SOURCES, TASK_ANSWER_TYPES, TASK_LABELS, load_any
from research.data.splits import SPLITS, select_split
from research.evaluation.pipeline import EvalSettings, PromptSet, evaluate
from research.evaluation.refusal import refusal_list
from research.evaluation.report import format_table, plot_metrics, write_results

log = logging.getLogger("research.evaluate")
DEFAULT_HARMFUL = "advbench"
DEFAULT_BENIGN = "freshqa,everyday"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m research.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="anything load_pretrained takes")
    p.add_argument("--label", help="the model's name in results.json (default: --model)")
    p.add_argument("--harmful", default=DEFAULT_HARMFUL,
                   help=f"prompt file or source names (default {DEFAULT_HARMFUL}; 'none' skips)")
    p.add_argument("--benign", default=DEFAULT_BENIGN,
                   help=f"prompt file or source names (default {DEFAULT_BENIGN}; 'none' skips)")
    p.add_argument("--task", action="append", default=[],
                   help=f"task suite, repeatable: {', '.join(sorted(TASK_ANSWER_TYPES))}")
    p.add_argument("--field", default="prompt", help="prompt field/column in prompt files")
    p.add_argument("--split", default="test", choices=[*SPLITS, "all"],
                   help="split of registered sources (files are used whole)")
    p.add_argument("--prefix", help="text injected at the start of the answer (PING)")
    p.add_argument("--prefix-mode", default="assistant", choices=["assistant", "user"])
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, help="at most N prompts from each source or file")
    p.add_argument("--judge", default="relevance",
                   help="registered judge name (keyword, relevance, llama-guard-3-1b, "
                        "llama-guard-3-8b, harmbench-llama2-13b, wildguard, ...)")
    p.add_argument("--judge-source", help="a hub judge's model as a local folder "
                                          "(default: its hub id)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results.json")
    p.add_argument("--plot", action="store_true", help="also write DIR/metrics.png")
    args = p.parse_args(argv)
    for name in ("max_new_tokens", "batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def load_prompts(spec: str, kind: str, args: argparse.Namespace,
                 counts: dict[str, dict]) -> list[Row]:
    """Rows of one --harmful/--benign/--task value, split and limited; counts recorded."""
    rows: list[Row] = []
    for part in [s.strip() for s in spec.split(",") if s.strip()]:
        kwargs = {"max_chars": 1000} if part == "writingbench" else {}
        loaded, c = load_any(part, kind=kind, field=args.field, **kwargs)
        if part in SOURCES and args.split != "all":
            key = "response" if SOURCES[part].kind == "refusal" else "prompt"
            kept = select_split(loaded, args.split, key=key)
            c.skip(f"not in split {args.split}", len(loaded) - len(kept))
            loaded = kept
        if args.limit is not None and len(loaded) > args.limit:
            c.skip("over --limit", len(loaded) - args.limit)
            loaded = loaded[:args.limit]
        c.kept = len(loaded)
        if not loaded:
            raise DataError(part, f"no prompts left (split {args.split}, limit {args.limit})")
        counts[part] = c.to_dict()
        log.info("%s prompts from %s: %s", kind, part, counts[part])
        rows.extend(loaded)
    return rows


def build_sets(args: argparse.Namespace) -> tuple[list[PromptSet], dict[str, dict]]:
    counts: dict[str, dict] = {}
    sets = []
    if args.harmful.lower() != "none":
        sets.append(PromptSet("harmful", "harmful", load_prompts(args.harmful, "harmful",
                                                                  args, counts)))
    if args.benign.lower() != "none":
        sets.append(PromptSet("benign", "benign", load_prompts(args.benign, "benign",
                                                               args, counts)))
    for task in args.task:
        if task not in TASK_ANSWER_TYPES:
            raise DataError(task, f"unknown task; tasks: {', '.join(sorted(TASK_ANSWER_TYPES))}")
        sets.append(PromptSet(f"task:{task}", "task", load_prompts(task, "task", args, counts),
                              answer_type=TASK_ANSWER_TYPES[task],
                              labels=TASK_LABELS.get(task, ())))
    if not sets:
        raise DataError("arguments", "nothing to evaluate: --harmful and --benign are "
                                     "'none' and no --task was given")
    return sets, counts


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    out = Path(args.out)
    if (out / "results.json").exists() and not args.overwrite:
        print(f"error: {out / 'results.json'} exists; choose another --out or pass "
              f"--overwrite", file=sys.stderr)
        return 2
    try:
        sets, counts = build_sets(args)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from research.models import load_pretrained

    model, tokenizer = load_pretrained(args.model)
    from research.evaluation.verdicts import get_judge

    judge = get_judge(args.judge, **({"model_source": args.judge_source}
                                     if args.judge_source else {}))
    settings = EvalSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed, prefix=args.prefix,
                            prefix_mode=args.prefix_mode, system=args.system,
                            batch_size=args.batch_size)
    entry, records = evaluate(model, tokenizer, sets, settings, judge=judge)
    entry["counts"] = counts
    entry["refusal_list"] = refusal_list()
    entry["settings"].update(model=args.model, split=args.split, limit=args.limit)
    label = args.label or args.model
    results = {label: entry}
    write_results(out, results, records, overwrite=args.overwrite)
    if args.plot:
        plot_metrics(results, out / "metrics.png")
    print(format_table(results))
    print(f"{entry['timing']['prompts']} prompts, "
          f"{entry['timing']['prompts_per_second']:.2f} prompts/s; wrote {out}/results.json")
    print(json.dumps({name: m["value"] for name, m in entry.items()
                      if isinstance(m, dict) and "value" in m}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
