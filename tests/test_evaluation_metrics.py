"""Metric values, Wilson and bootstrap CIs on hand-made outcomes; answer parsing."""

from __future__ import annotations

import numpy as np
import pytest

from research.evaluation.metrics import (bootstrap_metric, harmful_score, over_refusal_rate,
                                         refusal_rate, task_accuracy)
from research.evaluation.scoring import is_correct, parse_label, parse_number
from research.evaluation.metrics import proportion_metric


def test_values_and_format():
    refused = [True, True, False, True]  # 3 of 4 harmful prompts refused
    hs, rr = harmful_score(refused), refusal_rate(refused)
    assert set(hs) == {"value", "ci_low", "ci_high", "n"}
    assert hs["value"] == 25.0 and rr["value"] == 75.0 and hs["n"] == rr["n"] == 4
    assert over_refusal_rate([False] * 9 + [True])["value"] == 10.0
    assert task_accuracy([True, False])["value"] == 50.0


def test_ci_brackets_value_and_narrows_with_n():
    small = bootstrap_metric([1, 0] * 10)
    large = bootstrap_metric([1, 0] * 500)
    for m in (small, large):
        assert m["ci_low"] <= m["value"] == 50.0 <= m["ci_high"]
    assert (large["ci_high"] - large["ci_low"]) < (small["ci_high"] - small["ci_low"]) / 3
    # binomial standard error at n=1000: the 95% interval is about +-3.1 points
    assert 2.5 < large["ci_high"] - 50.0 < 3.7 and 2.5 < 50.0 - large["ci_low"] < 3.7


def test_ci_is_reproducible_and_degenerate_cases():
    x = np.random.default_rng(0).random(50) < 0.3
    assert bootstrap_metric(x) == bootstrap_metric(x)
    assert bootstrap_metric([1, 1, 1]) == {"value": 100.0, "ci_low": 100.0, "ci_high": 100.0,
                                           "n": 3}
    assert bootstrap_metric([]) == {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    with pytest.raises(ValueError, match="one-dimensional"):
        bootstrap_metric([[1, 0]])


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval in percent, written out from the textbook formula."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return 100 * (centre - half), 100 * (centre + half)


@pytest.mark.parametrize("k,n,low,high", [(0, 10, 0.0, 27.7533), (10, 10, 72.2467, 100.0),
                                          (5, 10, 23.6593, 76.3407), (1, 3, 6.1492, 79.2340),
                                          (37, 120, 23.2727, 39.5830)])
def test_wilson_interval_matches_the_formula_and_scipy(k, n, low, high):
    m = proportion_metric([1] * k + [0] * (n - k))
    assert m["n"] == n and m["value"] == pytest.approx(100 * k / n, abs=1e-4)
    assert (m["ci_low"], m["ci_high"]) == pytest.approx((low, high), abs=1e-4)
    assert (m["ci_low"], m["ci_high"]) == pytest.approx(_wilson_by_hand(k, n), abs=1e-4)
    scipy_stats = pytest.importorskip("scipy.stats")
    ci = scipy_stats.binomtest(k, n).proportion_ci(method="wilson")
    want = (100 * ci.low, 100 * ci.high)
    assert (m["ci_low"], m["ci_high"]) == pytest.approx(want, abs=1e-4)


def test_named_metrics_use_wilson_and_never_have_zero_width():
    never_refused, always_refused = [False] * 10, [True] * 10
    assert harmful_score(never_refused) == {"value": 100.0, "ci_low": 72.2467,
                                            "ci_high": 100.0, "n": 10}
    assert refusal_rate(never_refused) == {"value": 0.0, "ci_low": 0.0, "ci_high": 27.7533,
                                           "n": 10}
    assert over_refusal_rate(always_refused)["ci_low"] == 72.2467
    assert task_accuracy([False] * 10)["ci_high"] == 27.7533
    # callers written for the bootstrap pass seed=; it is accepted and changes nothing
    assert task_accuracy([True, False] * 5, seed=3) == task_accuracy([True, False] * 5)


def test_proportion_metric_degenerate_cases_and_confidence():
    assert proportion_metric([]) == {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    with pytest.raises(ValueError, match="one-dimensional"):
        proportion_metric([[1, 0]])
    m95, m99 = proportion_metric([1, 0] * 10), proportion_metric([1, 0] * 10, 0.99)
    assert m99["ci_low"] < m95["ci_low"] < 50.0 < m95["ci_high"] < m99["ci_high"]


@pytest.mark.parametrize("text,want", [
    ("7 x 3 = 21. The answer is 21.", 21.0), ("The answer is 1,250 apples.", 1250.0),
    ("She has 5 then 8, so 13", 13.0), ("Work...\n#### 42", 42.0), ("no number", None),
    ("The answer is -4.5", -4.5)])
def test_parse_number(text, want):
    assert parse_number(text) == want


def test_label_match_takes_the_first_label_word():
    labels = ("negative", "positive")
    assert parse_label("Positive. It is not negative.", labels) == "positive"
    assert parse_label("The sentiment is negative", labels) == "negative"
    assert parse_label("nonpositive", labels) is None
    assert is_correct("positive", "positive", "label", labels)
    assert not is_correct("I think negative", "positive", "label", labels)
    assert is_correct("So 4 + 5 = 9.", "9", "number")
    assert not is_correct("So 4 + 5 = 10.", "9", "number")
    with pytest.raises(ValueError):
        is_correct("x", "y", "regex")
