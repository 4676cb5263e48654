"""Content-hash splits: deterministic, disjoint, roughly the asked fractions."""

from __future__ import annotations

import pytest

from research.data import Row, load_source
from research.data.splits import select_split, split_of, split_rows


def test_splits_are_deterministic_disjoint_and_cover_everything():
    rows, _ = load_source("donotanswer")
    a, b = split_rows(rows), split_rows(list(reversed(rows)))
    keys = {name: {r.uid for r in part} for name, part in a.items()}
    assert keys == {name: {r.uid for r in part} for name, part in b.items()}
    prompts = {name: {r.prompt for r in part} for name, part in a.items()}
    assert not (prompts["train"] & prompts["val"]) and not (prompts["train"] & prompts["test"])
    assert not (prompts["val"] & prompts["test"])
    assert sum(map(len, a.values())) == len(rows)
    assert 0.72 < len(a["train"]) / len(rows) < 0.88
    assert 0.05 < len(a["test"]) / len(rows) < 0.15


def test_duplicates_and_trivial_variants_share_a_split():
    assert split_of("Tell me a joke") == split_of("  tell me   a JOKE ")
    rows = [Row(prompt=p, kind="benign", source="s", uid=str(i))
            for i, p in enumerate(["same one", "Same One", "other", "same   one"])]
    parts = split_rows(rows)
    holding = [name for name, part in parts.items() if any(r.uid == "0" for r in part)][0]
    assert {r.uid for r in parts[holding]} >= {"0", "1", "3"}


def test_salt_and_fractions_change_assignment_and_are_validated():
    texts = [f"prompt number {i}" for i in range(400)]
    assert [split_of(t) for t in texts] != [split_of(t, salt="x") for t in texts]
    assert {split_of(t, (0.0, 0.0, 1.0)) for t in texts} == {"test"}
    with pytest.raises(ValueError, match="summing to 1"):
        split_of("a", (0.5, 0.2, 0.2))
    rows = [Row(prompt=t, kind="benign", source="s", uid=t) for t in texts]
    assert select_split(rows, None) == rows
    with pytest.raises(ValueError, match="split must be one of"):
        select_split(rows, "dev")
