"""Deterministic train/validation/test splits by content hash.

A row's split depends only on its normalized prompt text (and a salt), never on file
order or a global seed, so the same prompt lands in the same split in every source,
run and machine, and duplicates can never straddle two splits.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

from research.data.rows import Row

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive key, so trivial variants share a split."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def unit_hash(text: str, salt: str = "") -> float:
    """A uniform number in [0, 1) from the text's SHA-256."""
    digest = hashlib.sha256(f"{salt}\x00{normalize(text)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(text: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = "") -> str:
    _check(fractions)
    u, edge = unit_hash(text, salt), 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]  # float rounding at the top edge


def _check(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1 "
                         f"(train, val, test), got {tuple(fractions)}")


def split_rows(rows: Sequence[Row], fractions: Sequence[float] = DEFAULT_FRACTIONS,
               salt: str = "", key: str = "prompt") -> dict[str, list[Row]]:
    """Rows by split, each keeping the input order. `key` picks the hashed field
    ("response" for refusal rows, whose prompt is empty)."""
    _check(fractions)
    out: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for row in rows:
        out[split_of(getattr(row, key) or "", fractions, salt)].append(row)
    return out


def select_split(rows: Sequence[Row], split: str | None, **kwargs) -> list[Row]:
    """One split of `rows` (all rows when split is None)."""
    if split is None:
        return list(rows)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    return split_rows(rows, **kwargs)[split]
