"""The study end to end on a tiny random model: run folder, caching, no overwrite,
loadable checkpoints, the evaluate CLI, resume refusal, and the optimizer sweep."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.harmful_finetuning import run_study
from experiments.optimization_sweep import run_sweep
from research.evaluation.refusal import refusal_list
from research.models import load_pretrained
from research.pipeline.runs import RunFolderExistsError
from tests.pipeline_fixtures import save_tiny_model, tiny_study_config

LABELS = ["base", "sft", "base+ft(p=0.25)", "base+ft(p=0.25, ema=0.9)", "sft+ft(p=0.25)",
          "sft+ft(p=0.25, ema=0.9)"]


@pytest.fixture(scope="module")
def study(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    model_folder = save_tiny_model(root / "model", tokenizer)
    cfg = tiny_study_config(model_folder, root)
    cfg.finetune.starts = ("base", "aligned")  # the non-aligned and the aligned start
    return cfg, run_study(cfg, progress=False)


def test_run_folder_is_complete(study):
    cfg, path = study
    for name in ("config.json", "metrics.jsonl", "results.json", "report.md",
                 "plots/metrics.png", "plots/by_method_and_p.png"):
        assert (path / name).is_file(), name
    results = json.loads((path / "results.json").read_text())
    assert list(results) == LABELS
    for entry in results.values():
        for metric in ("harmful_score", "refusal_rate", "over_refusal_rate", "task_accuracy"):
            m = entry[metric]
            assert set(m) >= {"value", "ci_low", "ci_high", "n"} and m["n"] > 0
            assert m["ci_low"] <= m["value"] <= m["ci_high"]
    report = (path / "report.md").read_text()
    assert "| sft+ft(p=0.25, ema=0.9) |" in report and "95% CI" in report
    assert "EMA 0.9 vs no EMA" in report and "significant" in report.lower()
    held = re.search(r"EMA 0\.9 \(track mode\) over (\d+) steps.* holds (\d+)% of them", report)
    events = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    trained = {e["steps"] for e in events if e.get("stage", "").endswith("_ema0.9")}
    assert held and trained == {int(held[1])}
    assert int(held[2]) == round(100 * 0.9 ** int(held[1]))
    assert "base+ft(p=0.25) vs base" in report and "sft+ft(p=0.25) vs sft" in report
    listed = refusal_list()  # the notes count the list's phrases and patterns
    assert (f"keyword list version refusal-v2 ({len(listed['phrases'])} phrases and "
            f"{len(listed['patterns'])} patterns)") in report
    assert "Verdicts: judge `relevance` (relevance-v1/" in report
    events = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    stages = {e["stage"]: e for e in events if e["event"] == "stage"}
    # the EMA stage trains first and also writes the no-EMA stage (its raw weights)
    assert list(stages) == ["align_sft", "ft_base_p0.25_ema0.9", "ft_base_p0.25_ema0",
                            "ft_sft_p0.25_ema0.9", "ft_sft_p0.25_ema0"]
    assert stages["ft_base_p0.25_ema0.9"]["source"] == cfg.model.source  # from the base
    assert stages["ft_sft_p0.25_ema0"]["cache_hit"]
    assert stages["ft_sft_p0.25_ema0"]["trained_with_ema_stage"] == \
        stages["ft_sft_p0.25_ema0.9"]["key"]


def test_raw_twin_of_an_ema_stage_equals_training_without_ema(study, tmp_path):
    """A fresh no-EMA training of the same cell reproduces the twin's weights (the
    track-mode EMA leaves the trajectory alone), while the EMA export differs."""
    from experiments.harmful_finetuning import drift_rows
    from research.models.checkpoints import load_hf_folder
    from research.pipeline import data as study_data
    from research.pipeline.scripts import base_and_data, finetune_block
    from research.pipeline.stages import train_stage

    cfg, path = study
    cache = Path(cfg.run.cache_dir)
    data = base_and_data(cfg, cache, None)[3]
    aligned = path / "checkpoints" / "align_sft"
    source_key = json.loads((aligned / "stage.json").read_text())["key"]
    _, fresh, summary = train_stage(
        label="fresh", source=str(aligned.resolve()), source_key=source_key,
        rows=study_data.user_rows(cfg, data, 0.25), stage_cfg=finetune_block(cfg, 0.25, 0.0),
        model_cfg=cfg.model, cache_root=tmp_path, progress=False,
        drift_rows=drift_rows(cfg, data))
    assert not summary["cache_hit"]
    weights = lambda folder: np.concatenate([np.ravel(a) for a in jax.tree.leaves(
        load_hf_folder(folder / "hf").layers.arrays())])
    twin = weights(path / "checkpoints" / "ft_sft_p0.25_ema0")
    np.testing.assert_allclose(twin, weights(fresh), atol=1e-6)
    assert np.abs(twin - weights(path / "checkpoints" / "ft_sft_p0.25_ema0.9")).max() > 1e-6


def test_stage_checkpoints_load_and_differ_from_the_base(study):
    cfg, path = study
    tokens = jnp.asarray(np.arange(1, 9, dtype=np.int32)[None])
    base, _ = load_pretrained(cfg.model.source, with_tokenizer=False)
    aligned, tok = load_pretrained(path / "checkpoints" / "align_sft")
    assert tok is not None and (path / "checkpoints" / "align_sft" / "orbax").is_dir()
    diff = jnp.abs(base(tokens).logits - aligned(tokens).logits).max()
    assert float(diff) > 1e-6  # training changed the exported (LoRA-merged) weights


def test_evaluate_cli_reads_a_stage_checkpoint(study, tmp_path):
    from research.evaluate import main

    _, path = study
    code = main(["--model", str(path / "checkpoints" / "ft_sft_p0.25_ema0"), "--benign",
                 "none", "--limit", "2", "--max-new-tokens", "2", "--out", str(tmp_path)])
    assert code == 0
    assert json.loads((tmp_path / "results.json").read_text())


def test_existing_run_folder_is_never_overwritten(study):
    cfg, path = study
    before = (path / "results.json").read_text()
    with pytest.raises(RunFolderExistsError, match="--resume"):
        run_study(cfg, progress=False)
    assert (path / "results.json").read_text() == before


def test_second_run_reuses_every_cached_stage(study):
    cfg, path = study
    again = cfg.copy_and_resolve_references()
    again.run.name = "t2"
    second = run_study(again, progress=False)
    events = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    stages = [e for e in events if e["event"] == "stage"]
    assert len(stages) == 5 and all(e["cache_hit"] for e in stages)
    first = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert [e["key"] for e in stages] == [e["key"] for e in first if e["event"] == "stage"]
    assert (second / "checkpoints" / "align_sft").resolve() == \
        (path / "checkpoints" / "align_sft").resolve()
    assert metrics_only(second / "results.json") == metrics_only(path / "results.json")


def metrics_only(results_path) -> dict:
    """Each model's metrics, without timings (which legitimately differ between runs)."""
    from research.evaluation.report import metric_items

    results = json.loads(results_path.read_text())
    return {label: dict(metric_items(entry)) for label, entry in results.items()}


def test_sweep_on_the_tiny_model(study):
    cfg, _ = study
    sweep_cfg = cfg.copy_and_resolve_references()
    sweep_cfg.run.update(experiment="tiny_sweep", name="s1")
    import ml_collections

    sweep_cfg.sweep = ml_collections.ConfigDict(dict(
        p=0.25, lrs=(1e-3,), batch_sizes=(4,), steps=(1, 2), ema_betas=(0.0, 0.9),
        safe_harmful_score=100.0))
    path = run_sweep(sweep_cfg, progress=False)
    cells = json.loads((path / "cells.json").read_text())
    assert len(cells) == 4 and len({c["key"] for c in cells}) == 4
    assert "evaluated on the test split" in (path / "report.md").read_text()
    assert (path / "plots" / "heatmap.png").is_file()
    best = json.loads((path / "best_cell.json").read_text())
    assert best["label"] in {c["label"] for c in cells}
    report = (path / "report.md").read_text()
    assert "Best safe cell" in report and "## EMA vs no EMA" in report
    assert "lr=0.001,bs=4,steps=2,ema=0.9 vs lr=0.001,bs=4,steps=2: harmful_score" in report
    # stage 1 came from the study's cache: same key, no second alignment
    assert (path / "checkpoints" / "align_sft").resolve() == \
        (study[1] / "checkpoints" / "align_sft").resolve()
    events = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    align = [e for e in events if e["event"] == "stage"]
    assert [e["stage"] for e in align] == ["align_sft"] and align[0]["cache_hit"]
