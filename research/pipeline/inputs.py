"""Inputs of the checkpoint scripts (experiments.ping, experiments.mechanism_analysis):
which models to load (`--model LABEL=SOURCE`, `--run FOLDER`) and which prompts to use
(a few rows of named sources' split, every source represented)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from research.data.rows import Row
from research.data.sources import load_source
from research.data.splits import select_split
from research.pipeline.data import within_cap


def model_sources(specs: Sequence[str], run: str | None) -> dict[str, str]:
    """label -> source from `label=source` specs and a run folder's checkpoints/*."""
    out: dict[str, str] = {}
    if run:
        folder = Path(run) / "checkpoints"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no checkpoints folder in run {run}")
        for stage in sorted(p for p in folder.iterdir() if p.is_dir()):
            out[stage.name] = str(stage)
    for spec in specs:
        label, sep, source = spec.partition("=")
        if not sep:
            label, source = Path(spec).name or spec, spec
        out[label] = source
    if not out:
        raise ValueError("give at least one --model LABEL=SOURCE or --run FOLDER")
    return out


def sample_rows(names: str, split: str, n: int, seed: int, **kwargs: Any) -> list[Row]:
    """Up to n rows of the named sources' split, interleaved so every source shows."""
    pools = []
    for name in [s.strip() for s in names.split(",") if s.strip()]:
        rows, _ = load_source(name, **kwargs)
        key = "response" if name == "refusals" else "prompt"
        rows = within_cap(name, select_split(rows, split, key=key), 1000)
        pools.append([rows[i] for i in np.random.default_rng(seed).permutation(len(rows))])
    mixed = [r for group in zip(*pools) for r in group] if pools else []
    used = {r.uid for r in mixed}
    mixed += [r for pool in pools for r in pool if r.uid not in used]
    return mixed[:n]
