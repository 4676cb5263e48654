"""Data of the benign-outlier study, built next to the main study's data.

- The benign pool: train split of the benign sources, minus every prompt of the
  alignment rows (stage 1 must not have seen what stage 2 selects from), answered by the
  base model with the alignment answers' settings (cached like them). Test splits never
  enter: the pool is a train split, and an overlap with an evaluation set is an error.
- The harmful arm: the main study's user harmful pool (base-model compliant answers),
  topped up from unused harmful train prompts when it holds fewer than k rows (its size
  is part of the main study's data block, which also fixes the alignment rows).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import ml_collections

from research.data.generated import answer_rows
from research.data.rows import DataError, Row
from research.pipeline.data import (_names, balanced_sample, generation_settings,
                                    split_pool)


def without_prompts(pools: dict[str, list[Row]], prompts: set[str],
                    counts: dict[str, dict]) -> dict[str, list[Row]]:
    """The pools minus rows whose prompt is in `prompts` (counted per source)."""
    out = {}
    for name, rows in pools.items():
        out[name] = [r for r in rows if r.prompt not in prompts]
        counts[f"{name}/removed_as_used"] = {"removed": len(rows) - len(out[name]),
                                             "kept": len(out[name])}
    return out


def check_disjoint(rows: Sequence[Row], others: Iterable[Row], what: str) -> None:
    """Raise if any prompt of `rows` is also a prompt of `others`."""
    shared = {r.prompt for r in rows} & {r.prompt for r in others}
    if shared:
        raise DataError(what, f"{len(shared)} prompts are shared, e.g. {sorted(shared)[:2]}")


def benign_pool(cfg: ml_collections.ConfigDict, data: dict[str, Any], model_id: str,
                generate: Callable, *, cache_dir: str | None,
                counts: dict[str, dict]) -> list[Row]:
    """`outliers.pool_n` benign train prompts unused by stage 1, with base-model answers
    (empty answers and refusals dropped and counted)."""
    d, o = cfg.data, cfg.outliers
    pools = split_pool(_names(o.pool_sources or d.benign_sources), "train", counts,
                       d.benign_max_chars)
    pools = without_prompts(pools, {r.prompt for r in data["align_rows"]}, counts)
    prompts = balanced_sample(pools, int(o.pool_n), int(o.seed))
    rows, c = answer_rows(prompts, model_id, generate, generation_settings(d.generation),
                          drop_refusals=True, cache_dir=cache_dir)
    counts["pool_answers"] = c.to_dict()
    check_disjoint(rows, data["align_rows"], "benign pool vs alignment rows")
    for s in data["eval_sets"]:
        check_disjoint(rows, s.rows, f"benign pool vs evaluation set {s.name}")
    return rows


def harmful_pool(cfg: ml_collections.ConfigDict, data: dict[str, Any], model_id: str,
                 generate: Callable, *, need: int, cache_dir: str | None,
                 counts: dict[str, dict]) -> list[Row]:
    """At least `need` harmful rows with compliant answers where the sources allow:
    the main study's user harmful pool first, then unused train prompts answered alike
    (1.5x the shortfall is asked for, since refusals are dropped)."""
    d = cfg.data
    rows = list(data["user_harmful"])
    if len(rows) >= need:
        return rows
    pools = split_pool(_names(d.harmful_sources), "train", counts)
    used = {r.prompt for r in data["align_rows"]} | {r.prompt for r in rows}
    pools = without_prompts(pools, used, counts)
    available = sum(len(v) for v in pools.values())
    extra_n = min(available, math.ceil(1.5 * (need - len(rows))) + 8)
    extra = balanced_sample(pools, extra_n, int(d.seed))
    answered, c = answer_rows(
        extra, model_id, generate,
        generation_settings(d.generation, temperature=d.harmful_temperature, top_p=0.95),
        drop_refusals=True, cache_dir=cache_dir)
    counts["harmful_top_up_answers"] = c.to_dict()
    rows += answered
    for s in data["eval_sets"]:
        check_disjoint(rows, s.rows, f"harmful pool vs evaluation set {s.name}")
    return rows
