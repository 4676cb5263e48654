"""The Vaccine study (configs/vaccine.py: SFT and Vaccine arms in one run, drift during
stage 2) end to end on a tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs import base, demo, vaccine
from experiments.harmful_finetuning import run_study
from tests.pipeline_fixtures import save_tiny_model, tiny_study_config

VARIANTS = ["sft+ft(p=0.25)", "vaccine+ft(p=0.25)"]


@pytest.fixture(scope="module")
def study(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("vaccine_study")
    cfg = tiny_study_config(save_tiny_model(root / "model", tokenizer), root, name="v1")
    real = vaccine.get_config()
    cfg.align_arms, cfg.reference_arm = real.align_arms, real.reference_arm
    cfg.finetune.update(starts=real.finetune.starts, ema_betas=real.finetune.ema_betas)
    cfg.finetune.drift = real.finetune.drift
    cfg.finetune.drift.update(n=5, every=1, batch_size=2)
    assert real.seeds == (0, 1, 2)
    cfg.seeds = (0, 1)  # two seeds keep the test short and exercise the fan-out
    return cfg, run_study(cfg, progress=False)


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_both_arms_are_aligned_attacked_and_compared_in_one_report(study):
    _, path = study
    results = json.loads((path / "results.json").read_text())
    assert list(results) == ["base", "sft", "vaccine", *VARIANTS]
    stages = [e["stage"] for e in _lines(path / "metrics.jsonl") if e["event"] == "stage"]
    assert stages == ["align_sft", "align_vaccine", "ft_sft_p0.25_ema0",
                      "ft_vaccine_p0.25_ema0", "align_sft_s1", "align_vaccine_s1",
                      "ft_sft_p0.25_ema0_s1", "ft_vaccine_p0.25_ema0_s1"]
    keys = {e["stage"]: e["key"] for e in _lines(path / "metrics.jsonl")
            if e["event"] == "stage"}
    assert keys["align_sft"] != keys["align_sft_s1"]  # a seed trains its own model
    for label in ("sft", *VARIANTS):
        m = results[label]["harmful_score"]
        assert m["n_seeds"] == 2 and len(m["per_seed"]) == 2 and set(
            results[label]["per_seed"]) == {"0", "1"}
    assert results["base"]["harmful_score"]["per_seed"][0] == \
        results["base"]["harmful_score"]["per_seed"][1]
    records = json.loads((path / "records" / "sft.json").read_text())
    assert sorted({r["seed"] for r in records}) == [0, 1]
    align = _lines(path / "checkpoints" / "align_vaccine" / "metrics.jsonl")
    assert all(m["loss"] > m["clean_loss"] for m in align)  # Vaccine's perturbed loss
    report = (path / "report.md").read_text()
    for metric in ("harmful_score", "task_accuracy"):
        assert f"vaccine+ft(p=0.25) vs sft+ft(p=0.25): {metric} changes by" in report
    assert "2 seeds)" in report and "Seeds per arm: 2 (0, 1)" in report
    assert "vaccine+ft(p=0.25) vs sft+ft(p=0.25): relative harmful embedding drift" in report
    assert "vaccine = vaccine" in report and "rho" in report
    for plot in ("by_method_and_p.png", "drift.png"):
        assert (path / "plots" / plot).stat().st_size > 0


def test_each_finetune_reports_its_drift_from_the_aligned_start(study):
    cfg, path = study
    results = json.loads((path / "results.json").read_text())
    assert "harmful_drift" not in results["sft"] and "harmful_drift" not in results["vaccine"]
    report = (path / "report.md").read_text()
    assert "## Harmful embedding drift" in report
    for label, arm in zip(VARIANTS, ("sft", "vaccine")):
        drift = results[label]["harmful_drift"]
        counts = drift["format_counts"]  # a prompt too long for max_length is counted
        assert counts["read"] == cfg.finetune.drift.n == counts["kept"] + counts["skipped"]
        assert drift["site"] == "attn_out" and drift["examples"] == counts["kept"] > 0
        for name in ("l2_total", "sum_sq_total"):
            m = drift[name]
            assert m["n"] == counts["kept"] and 0 < m["ci_low"] <= m["value"] <= m["ci_high"]
        assert drift["l2_total"]["value"] == pytest.approx(
            np.sqrt(drift["sum_sq_total"]["value"]))
        assert len(drift["l2_per_layer"]) == 2 and drift["alignment_loss"] > 0
        curve = _lines(path / drift["curve"])
        assert [q["step"] for q in curve] == [0, 1, 2]
        assert curve[0]["sum_sq_total"] == 0.0  # the start is the aligned model
        assert curve[-1]["l2_total"] == pytest.approx(drift["l2_total"]["value"], rel=1e-9)
        assert curve[1]["alignment_loss"] != curve[0]["alignment_loss"]
        assert f"| {label} | {drift['l2_total']['value']:.4g} [" in report
        assert (f"{counts['skipped']} of {counts['read']} rows skipped" in report) == bool(
            counts["skipped"])
        stage = json.loads((path / "checkpoints" / f"ft_{arm}_p0.25_ema0" /
                            "stage.json").read_text())
        assert stage["config"]["drift"]["enabled"]


def test_drift_is_off_outside_the_vaccine_config_and_the_rho_sweep_shares_stages():
    for cfg in (base.get_config(), demo.get_config()):
        assert "drift" not in cfg.finetune and "align_arms" not in cfg
    main, sweep = vaccine.get_config(), vaccine.get_config("rho_sweep")
    assert main.finetune.drift.enabled and main.finetune.p_values == (0.0, 0.05, 0.1, 0.2)
    assert sorted(main.align_arms) == ["sft", "vaccine"]
    assert sweep.finetune.p_values == (0.1,)
    rhos = sorted(a.method_config.get("rho", 0.0) for a in sweep.align_arms.values())
    assert rhos == [0.0, *vaccine.RHO_SWEEP]
    assert sweep.align_arms.vaccine_rho2 == main.align_arms.vaccine  # a cache hit
    with pytest.raises(ValueError, match="rho_sweep"):
        vaccine.get_config("nope")
    chosen = vaccine.get_config("rho_sweep:0.5,5")
    assert sorted(chosen.align_arms) == ["sft", "vaccine_rho0p5", "vaccine_rho5"]
    assert chosen.align_arms.vaccine_rho5 == sweep.align_arms.vaccine_rho5
    for bad in ("rho_sweep:", "rho_sweep:a", "rho_sweep:0,2", ":2"):
        with pytest.raises(ValueError, match="rho"):
            vaccine.get_config(bad)
