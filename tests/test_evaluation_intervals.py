"""Wilson intervals, the hierarchical bootstrap over seeds and prompts, and paired effects."""

from __future__ import annotations

import numpy as np
import pytest

from research.evaluation.intervals import paired_effect, seeded_metric, wilson_interval
from research.evaluation.metrics import proportion_metric


def _width(m: dict) -> float:
    return m["ci_high"] - m["ci_low"]


def _outcomes(k: int, n: int) -> list[int]:
    return [1] * k + [0] * (n - k)


def test_wilson_interval_bounds_and_errors():
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-6))
    assert wilson_interval(10, 10) == (pytest.approx(0.722467, abs=1e-6), 1.0)
    low, high = wilson_interval(5, 10, 0.99)
    assert low < 0.236593 and high > 0.763407
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_one_seed_falls_back_to_wilson():
    m = seeded_metric({7: _outcomes(3, 10)})
    assert m["interval"] == "wilson" and m["n_seeds"] == 1 and m["n"] == 10
    w = proportion_metric(_outcomes(3, 10))
    assert (m["value"], m["ci_low"], m["ci_high"]) == (w["value"], w["ci_low"], w["ci_high"])
    assert m["per_seed"] == [30.0]


def test_value_is_the_mean_of_per_seed_percentages():
    m = seeded_metric([[1] * 10, [0] * 30])  # pooled would be 25%
    assert m["value"] == 50.0 and m["per_seed"] == [100.0, 0.0]
    assert m["n"] == 40 and m["n_seeds"] == 2 and m["interval"] == "hierarchical-bootstrap"
    assert m["ci_low"] <= m["value"] <= m["ci_high"]


def test_seeds_that_disagree_give_a_wider_interval():
    agree = seeded_metric([_outcomes(50, 100)] * 6)
    disagree = seeded_metric([_outcomes(k, 100) for k in (20, 80, 20, 80, 20, 80)])
    assert agree["value"] == disagree["value"] == 50.0
    assert _width(disagree) > 3 * _width(agree)
    # without seed variance the interval is about the binomial one for 600 outcomes
    assert 4.0 < _width(agree) < 12.0


def test_hierarchical_interval_covers_seed_variance_that_pooled_wilson_misses():
    """Seeds with their own rates around 30%: the hierarchical interval covers the
    population rate far more often than a Wilson interval of the pooled outcomes."""
    rng = np.random.default_rng(1)
    hits_boot = hits_pooled = 0
    trials = 100
    for t in range(trials):
        rates = np.clip(0.3 + 0.1 * rng.standard_normal(8), 0.0, 1.0)
        seeds = [(rng.random(200) < r).astype(float) for r in rates]
        m = seeded_metric(seeds, n_boot=400, seed=t)
        pooled = proportion_metric(np.concatenate(seeds))
        hits_boot += m["ci_low"] <= 30.0 <= m["ci_high"]
        hits_pooled += pooled["ci_low"] <= 30.0 <= pooled["ci_high"]
    assert hits_boot >= 0.85 * trials and hits_pooled <= 0.7 * trials


@pytest.mark.parametrize("value", [0, 1])
def test_never_zero_width_at_0_or_100(value):
    m = seeded_metric([[value] * 10] * 3)
    low, high = (100 * x for x in wilson_interval(10 * 3 * value, 30))
    assert m["widened"] and m["value"] == 100.0 * value
    assert (m["ci_low"], m["ci_high"]) == pytest.approx((low, high), abs=1e-4)
    assert _width(m) > 5.0


def test_seeded_metric_is_deterministic_for_a_fixed_seed():
    rng = np.random.default_rng(0)
    seeds = {s: (rng.random(n) < 0.4).astype(int).tolist() for s, n in enumerate((37, 41, 53))}
    assert seeded_metric(seeds, seed=3) == seeded_metric(seeds, seed=3)
    assert seeded_metric(seeds, seed=3) != seeded_metric(seeds, seed=4)


def test_seeded_metric_empty_and_invalid_inputs():
    for empty in ([], {}, [[], []]):
        m = seeded_metric(empty)
        assert m["value"] is None and m["ci_low"] is None and m["n"] == 0
    with pytest.raises(ValueError, match="no outcomes"):
        seeded_metric([[1, 0], []])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        seeded_metric([[1, 2]])
    with pytest.raises(ValueError, match="one-dimensional"):
        seeded_metric([[[1, 0]]])


def _arms(shift: int, n_seeds: int = 3, n: int = 100) -> tuple[dict, dict]:
    """a: 30 of n prompts succeed per seed; b: the same plus `shift` more."""
    a = {(s, u): float(u < 30) for s in range(n_seeds) for u in range(n)}
    b = {(s, u): float(u < 30 + shift) for s in range(n_seeds) for u in range(n)}
    return a, b


def test_paired_effect_recovers_a_known_shift_with_the_sign_b_minus_a():
    a, b = _arms(20)
    up, down = paired_effect(a, b), paired_effect(b, a)
    assert up["value"] == 20.0 and down["value"] == -20.0
    assert 0.0 < up["ci_low"] <= 20.0 <= up["ci_high"] < 30.0 and up["significant"]
    assert -30.0 < down["ci_low"] <= -20.0 <= down["ci_high"] < 0.0 and down["significant"]
    assert up["n"] == 300 and up["n_seeds"] == 3 and up["interval"] == "hierarchical-bootstrap"


def test_identical_arms_are_not_significant_and_never_zero_width():
    a, _ = _arms(0)
    same = paired_effect(a, dict(a))
    assert same["value"] == 0.0 and not same["significant"] and same["widened"]
    assert same["ci_low"] < 0.0 < same["ci_high"]
    rng = np.random.default_rng(0)
    noisy = {k: float(rng.random() < 0.5) for k in a}
    flipped = {k: v if rng.random() < 0.9 else 1.0 - v for k, v in noisy.items()}
    for b in (dict(noisy), flipped):
        d = paired_effect(noisy, b)
        assert abs(d["value"]) < 5.0 and not d["significant"], d


def test_unpaired_keys_are_counted_not_dropped_silently():
    a, b = _arms(20, n_seeds=2, n=50)
    a[(9, "only-a")] = 1.0
    b[(0, "only-b")] = 0.0
    b[(0, "only-b2")] = 1.0
    d = paired_effect(a, b)
    assert d["n_unpaired_a"] == 1 and d["n_unpaired_b"] == 2 and d["n"] == 100
    none = paired_effect({(0, "x"): 1.0}, {(0, "y"): 1.0})
    assert none["value"] is None and none["n"] == 0 and not none["significant"]
    assert none["n_unpaired_a"] == none["n_unpaired_b"] == 1


def test_one_seed_uses_a_paired_bootstrap_over_prompts():
    a, b = _arms(10, n_seeds=1)
    d = paired_effect(a, b)
    assert d["interval"] == "paired-bootstrap" and d["n_seeds"] == 1 and d["value"] == 10.0
    assert 0.0 < d["ci_low"] < 10.0 < d["ci_high"]


def test_paired_effect_widens_when_seeds_disagree_and_is_deterministic():
    agree_a, agree_b = _arms(20, n_seeds=6)
    disagree_b = {(s, u): float(u < 30 + (0 if s % 2 else 40)) for s, u in agree_a}
    agree, disagree = paired_effect(agree_a, agree_b), paired_effect(agree_a, disagree_b)
    assert agree["value"] == disagree["value"] == 20.0
    assert _width(disagree) > 3 * _width(agree)
    assert paired_effect(agree_a, disagree_b, seed=5) == paired_effect(agree_a, disagree_b,
                                                                       seed=5)
    assert paired_effect(agree_a, disagree_b, seed=5) != paired_effect(agree_a, disagree_b,
                                                                       seed=6)


def test_paired_effect_rejects_bad_keys_and_outcomes():
    with pytest.raises(ValueError, match="seed, prompt_uid"):
        paired_effect({"set|uid": 1.0}, {"set|uid": 0.0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        paired_effect({(0, "u"): 2.0}, {(0, "u"): 0.0})
