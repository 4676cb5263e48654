"""Confidence intervals: proportions, metrics over several seeds, and paired effects.

All values are percentages (effects: percentage points) rounded to 4 decimals. The
bootstrap functions are deterministic for a fixed `seed`. No interval has zero width when
every outcome is identical: the Wilson interval never does, and the bootstraps are widened
to a Wilson-based floor in that case (see `_collapse_floor`).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Hashable, Mapping, Sequence

import numpy as np

N_BOOTSTRAP = 2000
_EMPTY = {"value": None, "ci_low": None, "ci_high": None, "n": 0}


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion successes / n, as fractions in [0, 1]."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0.0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes} of {n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return float(low), float(high)


def _collapse_floor(c: float, n: int, lo: float, hi: float,
                    confidence: float) -> tuple[float, float]:
    """The interval for n identical observations c of a quantity bounded by [lo, hi].

    w = the Wilson upper bound on the share of observations that differ from c when none
    of n did; the interval covers every mean reachable when a share w of them takes any
    other value in [lo, hi]. For 0/1 outcomes this is exactly the Wilson interval of 0 of
    n or n of n."""
    w = wilson_interval(0, n, confidence)[1]
    return c - w * (c - lo), c + w * (hi - c)


def _hierarchical_means(groups: Sequence[np.ndarray], n_boot: int,
                        rng: np.random.Generator) -> np.ndarray:
    """n_boot bootstrap replicates of the mean over groups of each group's mean: draw the
    groups with replacement, then each drawn group's observations with replacement.

    Resampling m observations of a group with replacement is drawn as multinomial counts
    over its distinct values, which has the same distribution as drawing m indices."""
    k = len(groups)
    picks = rng.integers(0, k, size=(n_boot, k))
    replicate = np.empty((n_boot, k))
    for g, x in enumerate(groups):
        chosen = picks == g
        values, counts = np.unique(x, return_counts=True)
        draws = rng.multinomial(x.size, counts / x.size, size=int(chosen.sum()))
        replicate[chosen] = draws @ values / x.size
    return replicate.mean(axis=1)


def _percentile(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _as_groups(per_seed: Mapping[Hashable, Sequence[float]] | Sequence[Sequence[float]]
               ) -> list[np.ndarray]:
    """Per-seed outcomes as 1-D float arrays, in input order; 0/1 (or [0, 1]) values only."""
    items = per_seed.items() if isinstance(per_seed, Mapping) else enumerate(per_seed)
    groups = []
    for name, outcomes in items:
        x = np.asarray(outcomes, np.float64)
        if x.ndim != 1:
            raise ValueError(f"seed {name!r}: outcomes must be one-dimensional, got {x.shape}")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError(f"seed {name!r}: outcomes must lie in [0, 1]")
        groups.append(x)
    return groups


def _pct(v: float) -> float:
    return round(100.0 * v, 4)


def seeded_metric(per_seed: Mapping[Hashable, Sequence[float]] | Sequence[Sequence[float]],
                  *, n_boot: int = N_BOOTSTRAP, seed: int = 0,
                  confidence: float = 0.95) -> dict:
    """A percentage over per-prompt 0/1 outcomes from several seeds (evaluation or
    training runs), with an interval that covers both seed variance and prompt sampling.

    `value` is the mean over seeds of each seed's percentage; `n` is the number of outcomes
    over all seeds; `per_seed` lists each seed's percentage in input order. The interval is
    a percentile hierarchical bootstrap (seeds with replacement, then prompts within each
    drawn seed); with one seed it is that seed's Wilson interval. When every outcome is
    identical the bootstrap collapses to a point, and the interval is widened to the Wilson
    interval of the pooled outcomes (`widened` is True): that treats all seed x prompt
    outcomes as independent, so it is a floor on the uncertainty, not an estimate of it.
    With two or three seeds the seed level is resampled coarsely; read such intervals as rough.
    No seeds, or only empty ones, give Nones; an empty seed among others is an error."""
    groups = _as_groups(per_seed)
    if not groups or all(g.size == 0 for g in groups):
        return {**_EMPTY, "n_seeds": len(groups), "per_seed": [], "interval": None,
                "widened": False}
    if any(g.size == 0 for g in groups):
        raise ValueError("a seed has no outcomes; drop it explicitly or evaluate it")
    means = [float(g.mean()) for g in groups]
    pooled = np.concatenate(groups)
    if len(groups) == 1:
        low, high = wilson_interval(float(pooled.sum()), pooled.size, confidence)
        interval, widened = "wilson", False
    else:
        rng = np.random.default_rng(seed)
        low, high = _percentile(_hierarchical_means(groups, n_boot, rng), confidence)
        interval, widened = "hierarchical-bootstrap", bool(np.all(pooled == pooled[0]))
        if widened:
            floor = wilson_interval(float(pooled.sum()), pooled.size, confidence)
            low, high = min(low, floor[0]), max(high, floor[1])
    return {"value": _pct(float(np.mean(means))), "ci_low": _pct(low), "ci_high": _pct(high),
            "n": int(pooled.size), "n_seeds": len(groups),
            "per_seed": [_pct(m) for m in means],
            "interval": interval, "widened": widened}


def paired_effect(a: Mapping[tuple[Hashable, Hashable], float],
                  b: Mapping[tuple[Hashable, Hashable], float], *,
                  n_boot: int = N_BOOTSTRAP, seed: int = 0, confidence: float = 0.95) -> dict:
    """The effect b - a in percentage points, paired by (seed, prompt_uid).

    a and b map (seed, prompt_uid) to a 0/1 outcome. Only keys in both arms are paired;
    `n_unpaired_a` / `n_unpaired_b` count the keys found in one arm only. `value` is the
    mean over seeds of each seed's mean paired difference; `n` counts pairs. The interval
    is a percentile bootstrap of the paired differences, hierarchical (seeds, then prompts
    within each drawn seed) over several seeds and over prompts for one. When every pair
    has the same difference c it is widened as in `_collapse_floor` (differences lie in
    [-1, 1]), so identical arms give a small interval around 0, never a point.
    `significant` says whether the interval excludes 0."""
    for key in (*a, *b):
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"keys must be (seed, prompt_uid) pairs, got {key!r}")
    shared = [k for k in a if k in b]
    unpaired = {"n_unpaired_a": len(a) - len(shared), "n_unpaired_b": len(b) - len(shared)}
    if not shared:
        return {**_EMPTY, "n_seeds": 0, "per_seed": [], "significant": False,
                "interval": None, "widened": False, **unpaired}
    by_seed: dict[Hashable, list[float]] = {}
    for key in shared:
        if not (0.0 <= float(a[key]) <= 1.0 and 0.0 <= float(b[key]) <= 1.0):
            raise ValueError(f"outcomes must lie in [0, 1], got {a[key]}, {b[key]} at {key!r}")
        by_seed.setdefault(key[0], []).append(float(b[key]) - float(a[key]))
    groups = [np.asarray(by_seed[s]) for s in by_seed]
    means = [float(g.mean()) for g in groups]
    diffs = np.concatenate(groups)
    rng = np.random.default_rng(seed)
    low, high = _percentile(_hierarchical_means(groups, n_boot, rng), confidence)
    widened = bool(np.all(diffs == diffs[0]))
    if widened:
        floor = _collapse_floor(float(diffs[0]), diffs.size, -1.0, 1.0, confidence)
        low, high = min(low, floor[0]), max(high, floor[1])
    ci_low, ci_high = _pct(low), _pct(high)
    return {"value": _pct(float(np.mean(means))), "ci_low": ci_low, "ci_high": ci_high,
            "n": int(diffs.size), "n_seeds": len(groups), "per_seed": [_pct(m) for m in means],
            "significant": ci_low > 0.0 or ci_high < 0.0,
            "interval": "hierarchical-bootstrap" if len(groups) > 1 else "paired-bootstrap",
            "widened": widened, **unpaired}
