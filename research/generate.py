"""Command line generation: one JSON line per prompt with `prompt` and `completion`.

    python -m research.generate --model smollm2-135m-instruct --max-new-tokens 32 \
        [--prefix TEXT] [--prefix-mode assistant|user] [--temperature T] [--top-p P] \
        [--seed S] PROMPT...

Greedy unless a temperature is given. With `--prefix` the text is injected at the start
of the assistant's turn and the reported completion includes it.
"""

from __future__ import annotations

import argparse
import json
import sys

from research.models import load_pretrained
from research.models.chat import PREFIX_MODES
from research.models.generate import generate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m research.generate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("prompts", nargs="+", metavar="PROMPT")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="embedded alias, HF folder, .gguf file, hub id or run checkpoint")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--prefix-mode", choices=PREFIX_MODES, default="assistant")
    parser.add_argument("--system", default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--batch-size", type=int, default=16)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, tokenizer = load_pretrained(args.model, dtype=args.dtype)
    completions = generate(
        model, tokenizer, args.prompts, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed, prefix=args.prefix,
        prefix_mode=args.prefix_mode, system=args.system, batch_size=args.batch_size)
    for prompt, completion in zip(args.prompts, completions):
        sys.stdout.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
