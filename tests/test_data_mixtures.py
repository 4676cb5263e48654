"""Alignment set, user fine-tuning set with exact n and p, preference pairs."""

from __future__ import annotations

import pytest

from research.data import Row, load_source
from research.data.mixtures import alignment_set, preference_pairs, user_finetune_set


def _rows(n, kind, response="answer"):
    return [Row(prompt=f"{kind} {i}", kind=kind, source=kind, uid=f"{kind}:{i}",
                response=f"{response} {i}") for i in range(n)]


@pytest.mark.parametrize("n,p,want", [(1000, 0.1, 100), (1000, 0.0, 0), (1000, 0.05, 50),
                                      (200, 0.2, 40), (10, 1.0, 10), (7, 0.5, 4)])
def test_user_set_has_exact_n_and_p(n, p, want):
    rows = user_finetune_set(_rows(150, "harmful"), _rows(1200, "task"), n=n, p=p, seed=0)
    assert len(rows) == n
    assert sum(r.kind == "harmful" for r in rows) == want
    assert len({r.uid for r in rows}) == n  # sampled without replacement


def test_user_set_is_seeded_and_shuffled():
    h, b = _rows(50, "harmful"), _rows(500, "task")
    a = user_finetune_set(h, b, n=100, p=0.1, seed=1)
    assert a == user_finetune_set(h, b, n=100, p=0.1, seed=1)
    assert a != user_finetune_set(h, b, n=100, p=0.1, seed=2)
    first_half = sum(r.kind == "harmful" for r in a[:50])
    assert 0 < first_half < 10  # harmful rows are spread, not stacked at one end


def test_alignment_set_pairs_harmful_with_varied_refusals_and_keeps_benign():
    refusals, _ = load_source("refusals")
    harmful = [Row(prompt=f"bad {i}", kind="harmful", source="h", uid=f"h:{i}")
               for i in range(60)]
    benign = _rows(90, "benign")
    rows = alignment_set(harmful, benign, refusals, seed=0)
    assert len(rows) == 150
    refused = [r for r in rows if r.kind == "harmful"]
    texts = {r.response for r in refusals}
    assert len(refused) == 60 and all(r.response in texts for r in refused)
    assert len({r.response for r in refused}) > 30
    assert sorted(r.uid for r in rows if r.kind == "benign") == sorted(r.uid for r in benign)
    assert harmful[0].response is None  # inputs untouched


def test_preference_pairs_choose_refusal_reject_harmful_answer():
    pairs = preference_pairs(_rows(5, "harmful", "do it"), ["No.", "I can't help."], seed=0)
    assert [p.rejected for p in pairs] == [f"do it {i}" for i in range(5)]
    assert all(p.chosen in ("No.", "I can't help.") for p in pairs)
    assert [p.prompt for p in pairs] == [f"harmful {i}" for i in range(5)]
