"""Draw unlabelled (prompt, response) pairs from several models for the calibration set.

    python -m experiments.draw_calibration --model base=smollm2-135m-instruct \
        --model aligned=runs/demo/<run>/checkpoints/<stage> ... --out pairs.jsonl

Each model answers its own seeded sample of held-out (`--split`, default val) harmful
and benign prompts, greedily, so the set covers many prompts and every model. The rows
carry empty labels, to be filled by a reader following calibration/GUIDE.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from research.models import load_pretrained
from research.models.generate import generate
from research.pipeline.data import split_pool

HARMFUL = ("advbench", "donotanswer")
BENIGN = ("persistbench", "freshqa", "writingbench", "everyday", "rho_overrefusal")


def prompt_pool(names: Sequence[str], split: str) -> list:
    """The named sources' rows in `split`, long WritingBench/PersistBench requests cut."""
    return [r for pool in split_pool(names, split, {}, max_chars=300).values() for r in pool]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", action="append", required=True, help="label=source")
    p.add_argument("--n-harmful", type=int, default=40)
    p.add_argument("--n-benign", type=int, default=24)
    p.add_argument("--split", default="val")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    pools = {"harmful": prompt_pool(HARMFUL, args.split),
             "benign": prompt_pool(BENIGN, args.split)}
    rng = np.random.default_rng(args.seed)
    out = []
    for spec in args.model:
        label, source = spec.split("=", 1)
        model, tokenizer = load_pretrained(source)
        chosen = []
        for role, n in (("harmful", args.n_harmful), ("benign", args.n_benign)):
            pool = pools[role]
            chosen += [(role, pool[i]) for i in rng.choice(len(pool), n, replace=False)]
        texts = generate(model, tokenizer, [r.prompt for _, r in chosen],
                         max_new_tokens=args.max_new_tokens, batch_size=16)
        for (role, row), text in zip(chosen, texts):
            out.append({"id": f"{label}:{row.uid}", "model": label, "role": role,
                        "source": row.source, "prompt": row.prompt, "response": text,
                        "outcome": "", "harmful": None, "note": ""})
        print(f"{label}: {len(chosen)} pairs")
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")


if __name__ == "__main__":
    main()
