"""Candidate-prefix proposers for the PING search loop.

Why pluggable: the published method asks a strong chat model for new prefixes; offline
and in tests a deterministic proposer that recombines and mutates a seed pool of
sentences explores the same space at no cost. Both take the current seeds (scored
candidates) and return new prefix strings; the loop scores them.

The seed pool below was written for this project: short first-person sentences an
assistant could begin an answer with that make it weigh safety before helping.
"""

from __future__ import annotations

import re
from typing import Any, Protocol, Sequence

import numpy as np

SEED_POOL: tuple[str, ...] = (
    "Let me first check whether this request could cause harm.",
    "Before answering, I will consider if this is safe and legal.",
    "I only help with requests that are safe for everyone.",
    "If this request is dangerous or illegal, I will decline politely.",
    "Safety comes first in my answers.",
    "I will answer helpfully if the request is harmless.",
    "Let me think about whether helping here could hurt someone.",
    "I follow my guidelines on harmful content.",
    "My goal is to be helpful without enabling harm.",
    "I need to make sure this answer cannot be misused.",
    "Checking the request for harmful intent.",
    "For a harmless question I will simply answer it.",
    "I care about the wellbeing of people affected by my answer.",
    "Requests for weapons, crime or abuse are not something I assist with.",
    "Here is my careful answer.",
)

_SENTENCE = re.compile(r"[^.!?]+[.!?]")


def sentences(text: str) -> list[str]:
    """Split a prefix into sentences (text without final punctuation is one sentence)."""
    found = [s.strip() for s in _SENTENCE.findall(text)]
    rest = _SENTENCE.sub("", text).strip()
    return [s for s in found if s] + ([rest] if rest else [])


class Proposer(Protocol):
    def __call__(self, seeds: Sequence[Any], n: int, rng: np.random.Generator
                 ) -> list[str]: ...


class RecombineProposer:
    """Offline default: new prefixes from seed and pool sentences.

    Each candidate takes a seed prefix (or a pool sentence when there are no seeds) and
    applies one operation: append a pool sentence, replace one sentence, drop one
    sentence, or splice the first half of one seed with the second half of another.
    Candidates are capped at `max_sentences` sentences.
    """

    def __init__(self, pool: Sequence[str] = SEED_POOL, max_sentences: int = 3):
        if not pool:
            raise ValueError("RecombineProposer needs a non-empty sentence pool")
        self.pool = tuple(pool)
        self.max_sentences = max_sentences

    def __call__(self, seeds: Sequence[Any], n: int, rng: np.random.Generator) -> list[str]:
        parents = [s.prefix for s in seeds] or list(self.pool)
        out: list[str] = []
        for _ in range(n):
            base = sentences(parents[rng.integers(len(parents))])
            new = self.pool[rng.integers(len(self.pool))]
            op = rng.integers(4)
            if op == 0 or not base:
                base = base + [new]
            elif op == 1:
                base[rng.integers(len(base))] = new
            elif op == 2 and len(base) > 1:
                del base[rng.integers(len(base))]
            else:
                other = sentences(parents[rng.integers(len(parents))])
                base = base[:(len(base) + 1) // 2] + other[len(other) // 2:]
            deduped = list(dict.fromkeys(base))[:self.max_sentences]
            out.append(" ".join(deduped))
        return out


META_PROMPT = """You write short prefixes that an AI assistant places at the start of its answers.
A good prefix makes the assistant refuse harmful requests but still answer harmless ones.
Here are earlier prefixes with their scores (higher is better, at most 2.0):
{examples}
Write one new prefix of one or two sentences that could score higher.
Reply with the prefix only."""


class ChatModelProposer:
    """Asks a chat model (anything `load_pretrained` gives) for new prefixes.

    The meta-prompt lists the seeds with their scores; the candidates are sampled in one
    batch. Answers that are empty after cleaning are counted in `rejected` rather than
    dropped silently.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int = 48,
                 temperature: float = 0.9, max_chars: int = 300):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.max_chars = (max_new_tokens, temperature,
                                                                 max_chars)
        self.rejected = 0

    def meta_prompt(self, seeds: Sequence[Any]) -> str:
        lines = [f'- "{s.prefix}" (score {s.score:.2f})' for s in seeds] or \
                [f'- "{p}"' for p in SEED_POOL[:3]]
        return META_PROMPT.format(examples="\n".join(lines))

    @staticmethod
    def clean(text: str) -> str:
        line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
        return line.strip().strip('"').strip("- ").strip()

    def __call__(self, seeds: Sequence[Any], n: int, rng: np.random.Generator) -> list[str]:
        from research.models.generate import generate

        prompt = self.meta_prompt(seeds)
        # one batch: rows sample independently under one key
        texts = generate(self.model, self.tokenizer, [prompt] * n,
                         max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                         seed=int(rng.integers(2**31)), batch_size=max(1, n))
        out = []
        for text in texts:
            cleaned = self.clean(text)[:self.max_chars]
            if cleaned:
                out.append(cleaned)
            else:
                self.rejected += 1
        return out
