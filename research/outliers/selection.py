"""Choosing the benign outliers from scored pools, and the baselines they are compared with.

Outlier selection (Self-Inf-N): rank by score, take the top `pool_size` (1.2k), drop
trivial answers (a bare "yes"/"no"/"ok" teaches nothing but scores high), keep the first
k (100). Baselines: k random examples, and the top k by raw Self-Inf. Ties are broken by
pool index, so a selection is a pure function of the scores (and the seed for random).
Every set is saved as jsonl, one row per example with its scores and answer length, so a
study can show what was picked and why.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from pathlib import Path
from typing import Sequence

import numpy as np

from research.data.rows import Row
from research.outliers.self_influence import Scores

# Answers with no content of their own, compared after lower-casing, trimming whitespace
# and surrounding punctuation, and collapsing inner whitespace. The empty answer is
# trivial too.
TRIVIAL_ANSWERS: frozenset[str] = frozenset({
    "yes", "no", "yeah", "yep", "nope", "ok", "okay", "sure", "true", "false",
    "maybe", "correct", "incorrect", "right", "wrong", "n/a", "none", "i don't know",
    "i do not know", "no idea", "thanks", "thank you", "done", "yes it is", "no it isn't",
})
DEFAULT_POOL_SIZE = 1200
DEFAULT_K = 100
_STRIP = string.punctuation + string.whitespace


def normalize_answer(text: str | None) -> str:
    """Lower-case, collapse whitespace, trim surrounding punctuation."""
    return re.sub(r"\s+", " ", (text or "").lower()).strip(_STRIP)


def is_trivial(text: str | None) -> bool:
    """True for an empty answer or one in `TRIVIAL_ANSWERS` (after `normalize_answer`)."""
    norm = normalize_answer(text)
    return not norm or norm in TRIVIAL_ANSWERS


def rank_by_score(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties by ascending index (stable, deterministic)."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores hold {int(np.sum(~np.isfinite(scores)))} non-finite values")
    return np.argsort(-scores, kind="stable")


@dataclasses.dataclass(frozen=True)
class Selection:
    """Chosen pool indices (in rank order) and what happened on the way."""

    name: str
    indices: np.ndarray
    considered: int          # candidates looked at (the top pool, or the whole pool)
    dropped_trivial: int     # of those, removed as trivial answers
    short_by: int            # how many fewer than k were found

    def summary(self) -> dict:
        return {"name": self.name, "k": int(len(self.indices)), "considered": self.considered,
                "dropped_trivial": self.dropped_trivial, "short_by": self.short_by}


def select_top(name: str, scores: np.ndarray, answers: Sequence[str | None], *,
               k: int = DEFAULT_K, pool_size: int | None = DEFAULT_POOL_SIZE,
               drop_trivial: bool = True) -> Selection:
    """Top `pool_size` by score, trivial answers dropped (if asked), first `k` kept.

    `pool_size=None` considers the whole pool (plain top-k when `drop_trivial=False`).
    """
    if len(answers) != len(scores):
        raise ValueError(f"{len(scores)} scores but {len(answers)} answers")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = rank_by_score(scores)
    if pool_size is not None:
        if pool_size < k:
            raise ValueError(f"pool_size {pool_size} is smaller than k {k}")
        order = order[:pool_size]
    keep = [i for i in order if not (drop_trivial and is_trivial(answers[i]))]
    chosen = np.asarray(keep[:k], np.int64)
    return Selection(name, chosen, len(order), len(order) - len(keep), k - len(chosen))


def select_random(name: str, n: int, *, k: int = DEFAULT_K, seed: int = 0) -> Selection:
    """k distinct pool indices drawn uniformly with a seeded generator."""
    if k > n:
        raise ValueError(f"cannot draw {k} of {n} examples")
    chosen = np.random.default_rng(seed).choice(n, size=k, replace=False).astype(np.int64)
    return Selection(name, chosen, n, 0, 0)


def outlier_sets(scores: Scores, answers: Sequence[str | None], *, k: int = DEFAULT_K,
                 pool_size: int = DEFAULT_POOL_SIZE, seed: int = 0,
                 filter_raw: bool = False) -> dict[str, Selection]:
    """The study's three benign sets from one scored pool.

    self_inf_n: the method (top `pool_size` by Self-Inf-N, trivial answers dropped, k kept);
    self_inf_raw: top k by raw Self-Inf, unfiltered unless `filter_raw` (the baseline whose
    bias towards short answers Self-Inf-N corrects); random: k uniform draws.
    """
    n = len(scores.self_inf)
    pool_size = min(pool_size, n)
    return {
        "self_inf_n": select_top("self_inf_n", scores.self_inf_n, answers, k=k,
                                 pool_size=pool_size),
        "self_inf_raw": select_top("self_inf_raw", scores.self_inf, answers, k=k,
                                   pool_size=pool_size if filter_raw else None,
                                   drop_trivial=filter_raw),
        "random": select_random("random", n, k=k, seed=seed),
    }


def length_summary(lengths: np.ndarray) -> dict:
    """min / quartiles / mean / max of answer lengths, and the share under 5 tokens."""
    x = np.asarray(lengths, np.float64)
    if x.size == 0:
        return {"n": 0}
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    return {"n": int(x.size), "min": float(x.min()), "q25": float(q25), "median": float(q50),
            "q75": float(q75), "mean": float(x.mean()), "max": float(x.max()),
            "share_under_5": float(np.mean(x < 5))}


def selection_records(selection: Selection, rows: Sequence[Row], scores: Scores) -> list[dict]:
    """One json-able record per chosen example, in rank order."""
    self_inf_n = scores.self_inf_n
    return [{"rank": rank, "pool_index": int(i), "uid": rows[i].uid, "source": rows[i].source,
             "prompt": rows[i].prompt, "response": rows[i].response,
             "self_inf": float(scores.self_inf[i]), "self_inf_n": float(self_inf_n[i]),
             "answer_tokens": int(scores.answer_tokens[i]), "loss": float(scores.loss[i]),
             "trivial": is_trivial(rows[i].response)}
            for rank, i in enumerate(selection.indices)]


def save_selection(path: str | Path, selection: Selection, rows: Sequence[Row],
                   scores: Scores, *, overwrite: bool = False) -> dict:
    """Write the set as jsonl; returns its summary with the length distribution."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    records = selection_records(selection, rows, scores)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    lengths = np.asarray([r["answer_tokens"] for r in records])
    return {**selection.summary(), "path": str(path), "answer_tokens": length_summary(lengths),
            "trivial_kept": int(sum(r["trivial"] for r in records))}
