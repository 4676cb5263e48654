"""PING study: search a guard prefix on the validation split, then evaluate it on test.

    python -m experiments.ping --model aligned=runs/demo/first/checkpoints/align_sft \
        --model finetuned=runs/demo/first/checkpoints/ft_sft_p0.1_ema0 --out runs/ping/x

or `--run runs/demo/first` to take every checkpoint of a study run. The search runs on
the `--search-on` model (default: the last one given, usually the fine-tuned model);
perform/refuse use the validation split ("val"), the report uses the test split, so
the prefix is never selected on the prompts it is reported on. Writes `config.json`,
`candidates.jsonl` (every scored candidate), `prefix.txt`, `results.json` (label and
"label +ping" for each model, metrics with 95% CIs), `records.jsonl` and `report.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from research.data.sources import TASK_ANSWER_TYPES, TASK_LABELS
from research.evaluation.pipeline import EvalSettings, PromptSet, evaluate
from research.evaluation.refusal import refusal_list
from research.evaluation.report import format_table, plot_metrics, write_results
from research.pipeline.inputs import model_sources, sample_rows


# --------------------------------------------------------------------------- inputs
def prompt_sets(args: argparse.Namespace, split: str) -> list[PromptSet]:
    sets = [PromptSet("harmful", "harmful", sample_rows(args.harmful, split, args.n_harmful,
                                                        args.seed)),
            PromptSet("benign", "benign", sample_rows(args.benign, split, args.n_benign,
                                                      args.seed))]
    if args.task and args.n_task:
        sets.append(PromptSet(f"task:{args.task}", "task",
                              sample_rows(args.task, split, args.n_task, args.seed),
                              answer_type=TASK_ANSWER_TYPES[args.task],
                              labels=TASK_LABELS.get(args.task, ())))
    for s in sets:
        if not s.rows:
            raise ValueError(f"prompt set {s.name!r} is empty on split {split}")
    return sets


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.ping", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="LABEL=SOURCE, repeatable")
    p.add_argument("--run", help="study run folder: evaluate every checkpoints/<stage>")
    p.add_argument("--search-on", help="label of the model the prefix is searched on")
    p.add_argument("--proposer", default="offline",
                   help="'offline' (recombine the seed pool) or 'chat:SOURCE'")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--candidates", type=int, default=6)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--harmful", default="advbench")
    p.add_argument("--benign", default="persistbench,freshqa")
    p.add_argument("--task", default="arithmetic", help="verifiable task suite ('' for none)")
    p.add_argument("--n-harmful", type=int, default=32)
    p.add_argument("--n-benign", type=int, default=32)
    p.add_argument("--n-task", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--prefix-mode", default="assistant", choices=["assistant", "user"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def make_proposer(spec: str):
    from research.guard.proposers import ChatModelProposer, RecombineProposer

    if spec == "offline":
        return RecombineProposer()
    if spec.startswith("chat:"):
        from research.models import load_pretrained

        return ChatModelProposer(*load_pretrained(spec[len("chat:"):]))
    raise ValueError(f"--proposer must be 'offline' or 'chat:SOURCE', got {spec!r}")


def run(args: argparse.Namespace) -> dict:
    from research.guard.ping import model_scorer, search
    from research.guard.proposers import SEED_POOL
    from research.models import load_pretrained

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite or another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    sources = model_sources(args.model, args.run)
    search_label = args.search_on or list(sources)[-1]
    if search_label not in sources:
        raise ValueError(f"--search-on {search_label!r} is not one of {list(sources)}")
    settings = EvalSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            seed=args.seed, prefix_mode=args.prefix_mode)
    start = time.perf_counter()
    model, tokenizer = load_pretrained(sources[search_label])
    with open(out / "candidates.jsonl", "w", encoding="utf-8") as log_file:
        def log(c: dict) -> None:
            log_file.write(json.dumps(c, ensure_ascii=False) + "\n")
            log_file.flush()
            print(f"  round {c['round']} score {c['score']:.3f} "
                  f"(perform {c['perform']:.2f}, refuse {c['refuse']:.2f}): {c['prefix']!r}",
                  flush=True)

        result = search(make_proposer(args.proposer),
                        model_scorer(model, tokenizer, prompt_sets(args, "val"), settings),
                        initial=SEED_POOL[:args.candidates], rounds=args.rounds,
                        n_candidates=args.candidates, top_k=args.top_k, seed=args.seed,
                        log=log)
    prefix = result.best.prefix
    (out / "prefix.txt").write_text(prefix + "\n", encoding="utf-8")
    search_seconds = time.perf_counter() - start

    test_sets = prompt_sets(args, "test")
    results, records = {}, []
    for label, source in sources.items():
        loaded = (model, tokenizer) if label == search_label else load_pretrained(source)
        for name, pre in ((label, None), (f"{label} +ping", prefix or None)):
            entry, recs = evaluate(*loaded, test_sets, dataclasses.replace(settings, prefix=pre))
            entry["settings"]["model"] = source
            results[name] = entry
            records += [r | {"model": name} for r in recs]
    write_results(out, results, records, overwrite=True)
    plot_metrics(results, out / "metrics.png")
    summary = {"prefix": prefix, "search_on": search_label,
               "validation": result.best.to_dict(), "scored": len(result.history),
               "search_seconds": round(search_seconds, 2)}
    (out / "search.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = [f"# PING on {search_label}", "",
              f"Chosen prefix (best of {len(result.history)} scored on the validation "
              f"split, score {result.best.score:.3f} = perform {result.best.perform:.3f} + "
              f"refuse {result.best.refuse:.3f}):", "", f"> {prefix or '(no prefix)'}", "",
              "Test split, with and without the prefix (percent, bootstrap 95% CI). "
              f"Refusal list {refusal_list()['version']}; the prefix itself is not scored.",
              "", format_table(results), ""]
    (out / "report.md").write_text("\n".join(report), encoding="utf-8")
    return {"summary": summary, "results": results}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        outcome = run(args)
    except (FileExistsError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(outcome["results"]))
    print(json.dumps(outcome["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
