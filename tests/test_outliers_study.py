"""The benign-outlier study: its data is kept apart from stage 1 and the test splits,
the verdict says what the CI says, and end to end on a tiny random model (run folder,
selected sets ordered by their own score, report, stage 1 shared with the main study)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs.benign_outliers import outliers_block
from experiments import benign_outliers
from experiments.harmful_finetuning import run_study as run_main_study
from research.data.rows import DataError
from research.data.sources import load_source
from research.data.splits import select_split
from research.evaluation.pipeline import PromptSet
from research.evaluation.refusal import refusal_list
from research.outliers.report import verdict
from research.outliers.selection import is_trivial
from research.pipeline import outlier_data
from tests.pipeline_fixtures import save_tiny_model, tiny_study_config

ARMS = ["self_inf_n", "random", "self_inf_raw", "harmful"]


def _stub_generate(prompts, settings):
    """Deterministic answers; one prompt in four gets a refusal (dropped and counted)."""
    return ["I'm sorry, I can't help with that." if i % 4 == 3 else f"Answer {len(p)}."
            for i, p in enumerate(prompts)]


def test_benign_pool_excludes_alignment_prompts_and_test_splits(tmp_path):
    cfg = tiny_study_config(tmp_path, tmp_path)
    cfg.outliers = outliers_block(pool_n=20, k=4, top_pool=8, pool_sources="everyday")
    train = select_split(load_source("everyday")[0], "train")
    data = {"align_rows": [r.with_response("ok") for r in train[:30]], "eval_sets": []}
    counts: dict = {}
    pool = outlier_data.benign_pool(cfg, data, "stub", _stub_generate,
                                    cache_dir=str(tmp_path / "gen"), counts=counts)
    assert 0 < len(pool) < 20 and counts["pool_answers"]["reasons"] == {
        "answer is a refusal": 20 - len(pool)}
    assert not {r.prompt for r in pool} & {r.prompt for r in data["align_rows"]}
    assert {r.uid for r in pool} <= {r.uid for r in train}
    assert counts["everyday/removed_as_used"]["removed"] == 30
    # a pool prompt that also sits in an evaluation set is an error, never used
    data["eval_sets"] = [PromptSet("benign", "benign", pool[:1])]
    with pytest.raises(DataError, match="evaluation set benign"):
        outlier_data.benign_pool(cfg, data, "stub", _stub_generate,
                                 cache_dir=str(tmp_path / "gen"), counts={})


@pytest.mark.parametrize("low,high,start", [(1.0, 9.0, "Yes"), (-9.0, -1.0, "No, the opposite"),
                                            (-2.0, 6.0, "Not shown")])
def test_verdict_follows_the_ci(low, high, start):
    text = verdict("outliers", "random", {"value": (low + high) / 2, "ci_low": low,
                                          "ci_high": high, "n": 40})
    assert text.startswith(start)
    assert ("NOT show" in text) == (start == "Not shown")


@pytest.fixture(scope="module")
def studies(tokenizer, tmp_path_factory):
    """The tiny main study, then the outlier study on the same cache."""
    root = tmp_path_factory.mktemp("outliers")
    main = tiny_study_config(save_tiny_model(root / "model", tokenizer), root, name="main")
    main.finetune.update(starts=("aligned",), ema_betas=(0.0,), p_values=())  # stage 1 only
    main_path = run_main_study(main, progress=False)
    cfg = main.copy_and_resolve_references()
    cfg.run.update(experiment="tiny_outliers", name="o1")
    # k = 6 > the main study's 4 user harmful rows: the harmful arm is topped up
    cfg.outliers = outliers_block(pool_n=24, k=6, top_pool=12)
    return cfg, main_path, benign_outliers.run_study(cfg, progress=False)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _events(path):
    return _jsonl(path / "metrics.jsonl")


def test_run_folder_is_complete(studies):
    _, _, path = studies
    for name in ("config.json", "data_counts.json", "results.json", "records.jsonl", "report.md",
                 "pool_scores.jsonl", "selected/summary.json", "plots/metrics.png",
                 "plots/selection.png", *[f"selected/{a}.jsonl" for a in ARMS]):
        assert (path / name).is_file(), name
    results = json.loads((path / "results.json").read_text())
    assert list(results) == ["sft"] + [f"sft+ft({a})" for a in ARMS]
    for entry in results.values():
        for metric in ("harmful_score", "over_refusal_rate", "task_accuracy"):
            assert entry[metric]["n"] > 0
    stages = [e["stage"] for e in _events(path) if e["event"] == "stage"]
    assert stages == ["align_sft"] + [f"ft_sft_{a}" for a in ARMS]
    for arm in ARMS:
        assert (path / "checkpoints" / f"ft_sft_{arm}" / "hf").is_dir()


def test_stage_one_is_the_main_studys_checkpoint(studies):
    _, main_path, path = studies
    align = [e for e in _events(path) if e.get("stage") == "align_sft"][0]
    main_align = [e for e in _events(main_path) if e.get("stage") == "align_sft"][0]
    assert align["cache_hit"] and align["key"] == main_align["key"]
    assert (path / "checkpoints" / "align_sft").resolve() == \
        (main_path / "checkpoints" / "align_sft").resolve()
    results = json.loads((path / "results.json").read_text())
    assert results["sft"]["timing"]["cache_hit"]  # the same evaluation, reused


def test_selected_sets_follow_their_own_score(studies):
    cfg, _, path = studies
    k, top = cfg.outliers.k, cfg.outliers.top_pool
    pool = _jsonl(path / "pool_scores.jsonl")
    sets = {a: _jsonl(path / "selected" / f"{a}.jsonl") for a in ARMS}
    assert all(len(rows) == k for rows in sets.values())
    for r in pool:  # Self-Inf-N as specified, from the stored raw score and length
        assert r["self_inf_n"] == pytest.approx(
            np.log1p(r["self_inf"]) + np.log1p(r["answer_tokens"]), rel=1e-5)
    by = lambda field: sorted(pool, key=lambda r: (-r[field], r["pool_index"]))
    assert [r["uid"] for r in sets["self_inf_raw"]] == [r["uid"] for r in by("self_inf")[:k]]
    expected_n = [r["uid"] for r in by("self_inf_n")[:top] if not is_trivial(r["response"])]
    assert [r["uid"] for r in sets["self_inf_n"]] == expected_n[:k]
    pool_uids = {r["uid"] for r in pool}
    assert len({r["uid"] for r in sets["random"]}) == k and \
        {r["uid"] for r in sets["random"]} <= pool_uids
    harmful = sets["harmful"]
    assert {r["source"] for r in harmful} <= {"advbench", "donotanswer"}
    assert not {r["uid"] for r in harmful} & pool_uids
    summary = json.loads((path / "selected" / "summary.json").read_text())
    assert summary["self_inf_raw"]["answer_tokens"]["mean"] == pytest.approx(
        np.mean([r["answer_tokens"] for r in sets["self_inf_raw"]]))


def test_report_states_the_verdict_and_lengths(studies):
    _, _, path = studies
    text = (path / "report.md").read_text()
    assert "## Verdict" in text and "random benign samples" in text
    verdicts = text.split("## Verdict")[1].split("##")[0]
    assert sum(v.strip().startswith(("- Yes", "- No", "- Not shown"))
               for v in verdicts.splitlines()) == 4
    for arm in ARMS + ["pool"]:
        assert f"| {arm} |" in text
    assert "self_inf_n vs random" in text and "95% CI" in text
    assert "plots/selection.png" in text
    listed = refusal_list()
    assert (f"keyword list version refusal-v2 ({len(listed['phrases'])} phrases and "
            f"{len(listed['patterns'])} patterns)") in text


def test_second_run_reuses_every_cached_step(studies):
    cfg, _, path = studies
    again = cfg.copy_and_resolve_references()
    again.run.name = "o2"
    second = benign_outliers.run_study(again, progress=False)
    stages = [e for e in _events(second) if e["event"] == "stage"]
    assert len(stages) == 5 and all(e["cache_hit"] for e in stages)
    for arm in ARMS:
        assert (second / "selected" / f"{arm}.jsonl").read_text() == \
            (path / "selected" / f"{arm}.jsonl").read_text()


def test_default_config_shares_stage_one_with_the_demo():
    from configs import benign_outliers, demo
    from research.pipeline.hashing import config_hash

    ours, main = benign_outliers.get_config(), demo.get_config()
    for block in ("model", "data", "align", "finetune", "eval"):
        assert config_hash(ours[block]) == config_hash(main[block]), block
    o = ours.outliers
    assert o.top_pool >= o.k and o.pool_n >= 4 * o.k and o.param_mode in ("lora", "full")
