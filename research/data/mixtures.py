"""Training sets of the harmful fine-tuning protocol.

- alignment set (stage 1): harmful prompt -> a varied refusal, plus benign prompt ->
  helpful answer, at least as many benign as refusals by default (fewer teaches the
  model to refuse by the request's shape);
- user fine-tuning set (stage 2): exactly n rows, round(n * p) harmful prompt ->
  harmful answer, the rest benign task rows;
- preference pairs: prompt, chosen = refusal, rejected = harmful answer.
All are seeded and return new rows; inputs are never mutated.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from research.data.rows import DataError, Row


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    uid: str


def _need_responses(rows: Sequence[Row], pool: str) -> None:
    for i, row in enumerate(rows, start=1):
        if not row.response:
            raise DataError(pool, "has no answer", row=i, field="response")


def _sample(rows: Sequence[Row], k: int, rng: np.random.Generator, pool: str) -> list[Row]:
    if k > len(rows):
        raise DataError(pool, f"needs {k} rows but only {len(rows)} are available")
    return [rows[i] for i in rng.choice(len(rows), size=k, replace=False)]


def _refusal_texts(refusals: Sequence[Row | str]) -> list[str]:
    texts = [r.response if isinstance(r, Row) else r for r in refusals]
    if not texts or any(not t for t in texts):
        raise DataError("refusals", "need at least one non-empty refusal text")
    return texts


def alignment_set(harmful: Sequence[Row], benign: Sequence[Row],
                  refusals: Sequence[Row | str], *, seed: int = 0,
                  min_benign_ratio: float = 1.0) -> list[Row]:
    """Harmful prompts paired with seeded refusals, mixed with benign answered rows."""
    _need_responses(benign, "benign pool")
    if len(benign) < min_benign_ratio * len(harmful):
        raise DataError("benign pool", f"{len(benign)} benign rows for {len(harmful)} "
                                       f"refusals; need at least {min_benign_ratio}x as many")
    texts = _refusal_texts(refusals)
    rng = np.random.default_rng(seed)
    refused = [dataclasses.replace(row, response=texts[int(rng.integers(len(texts)))])
               for row in harmful]
    mixed = refused + list(benign)
    return [mixed[i] for i in rng.permutation(len(mixed))]


def user_finetune_set(harmful: Sequence[Row], benign: Sequence[Row], *, n: int, p: float,
                      seed: int = 0) -> list[Row]:
    """Exactly `n` rows of which round(n * p) are harmful, shuffled with `seed`."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError("user set", f"n must be a positive int, got {n!r}", field="n")
    if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise DataError("user set", f"p must be in [0, 1], got {p!r}", field="p")
    n_harmful = int(round(n * p))
    _need_responses(harmful, "harmful pool")
    _need_responses(benign, "benign pool")
    rng = np.random.default_rng(seed)
    rows = (_sample(harmful, n_harmful, rng, "harmful pool")
            + _sample(benign, n - n_harmful, rng, "benign pool"))
    return [rows[i] for i in rng.permutation(n)]


def preference_pairs(harmful: Sequence[Row], refusals: Sequence[Row | str], *,
                     seed: int = 0) -> list[PreferencePair]:
    """(prompt, chosen = a seeded refusal, rejected = the row's harmful answer)."""
    _need_responses(harmful, "harmful pool")
    texts = _refusal_texts(refusals)
    rng = np.random.default_rng(seed)
    return [PreferencePair(row.prompt, texts[int(rng.integers(len(texts)))], row.response,
                           row.uid) for row in harmful]
