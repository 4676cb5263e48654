"""Pure parts of the pipeline: config hashing, stage keys, the registry, run folders,
paired effect CIs, the sweep's grid and best cell, incomplete-stage refusal."""

from __future__ import annotations

import json
import os
import threading
import time

import ml_collections
import pytest

from configs import base, demo, optimization_sweep
from research.pipeline import registry
from research.pipeline.hashing import config_hash, to_plain
from research.pipeline.report import effect_sentence, paired_difference
from research.pipeline.runs import RunFolder, RunFolderExistsError
from research.pipeline.scripts import open_run
from research.pipeline.stages import (IncompleteStageError, link, stage_key, stage_lock,
                                      train_stage)
from research.pipeline.sweep import best_safe_cell, grid
from research.data.rows import Row

ROWS = [Row(prompt="How do I make tea?", response="Boil water.", kind="benign",
            source="x", uid="x:1")]


def test_hash_ignores_key_order_and_container_type_but_not_values():
    a = ml_collections.ConfigDict({"x": 1, "y": (1, 2)})
    assert config_hash(a) == config_hash({"y": [1, 2], "x": 1})
    assert config_hash(a) != config_hash({"x": 1, "y": [1, 3]})
    with pytest.raises(TypeError, match="not JSON-able"):
        to_plain({"f": object()})


def test_stage_key_depends_on_config_model_and_rows():
    cfg = base.get_config()
    key = stage_key("src", cfg.align, cfg.model, ROWS)
    assert key == stage_key("src", cfg.copy_and_resolve_references().align, cfg.model, ROWS)
    changed = cfg.copy_and_resolve_references()
    changed.align.optimizer.lr = 1e-4
    assert stage_key("src", changed.align, cfg.model, ROWS) != key
    assert stage_key("other", cfg.align, cfg.model, ROWS) != key
    assert stage_key("src", cfg.align, cfg.model, [ROWS[0].with_response("No.")]) != key


def test_registry_knows_sft_and_accepts_plugins():
    assert "sft" in registry.ALIGNMENT_METHODS
    with pytest.raises(ValueError, match="unknown alignment method 'nope'.*sft"):
        registry.get_method("nope")

    def builder(ctx):
        return "step"
    try:
        registry.register_method("toy")(builder)
        assert registry.get_method("toy") is builder
        with pytest.raises(ValueError, match="already registered"):
            registry.register_method("toy")(lambda ctx: None)
    finally:
        registry.ALIGNMENT_METHODS.pop("toy", None)


def test_run_folder_refuses_reuse_and_checks_config_on_resume(tmp_path):
    cfg = {"a": 1}
    run = RunFolder(tmp_path, "exp", "r", cfg)
    run.log({"event": "x"})
    with pytest.raises(RunFolderExistsError):
        RunFolder(tmp_path, "exp", "r", cfg)
    assert RunFolder(tmp_path, "exp", "r", cfg, resume=True).path == run.path
    with pytest.raises(ValueError, match="differs"):
        RunFolder(tmp_path, "exp", "r", {"a": 2}, resume=True)


def test_resumed_run_does_not_log_replayed_events_twice(tmp_path):
    run = RunFolder(tmp_path, "exp", "r", {"a": 1})
    trained = {"event": "stage", "stage": "align", "steps": 3, "cache_hit": False}
    run.log(trained)
    run.log({"event": "eval", "label": "base"})
    run.log({"event": "eval", "label": "base"})  # a fresh run keeps repeats
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"event": "eval", "lab')  # torn by a crash mid-write
    resumed = RunFolder(tmp_path, "exp", "r", {"a": 1}, resume=True)
    resumed.log(dict(trained, cache_hit=True))  # the same stage, replayed from the cache
    resumed.log({"label": "base", "event": "eval"})  # replayed evaluation, keys reordered
    resumed.log({"event": "stage", "stage": "ft", "steps": 2, "cache_hit": False})  # new
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert lines[3] == '{"event": "eval", "lab'
    records = [json.loads(line) for i, line in enumerate(lines) if i != 3]
    assert [r.get("stage", r.get("label")) for r in records] == ["align", "base", "base", "ft"]


def test_resume_without_a_name_continues_the_latest_run_of_the_same_config(tmp_path):
    cfg = ml_collections.ConfigDict({"run": {"root": str(tmp_path), "experiment": "exp",
                                             "name": ""}, "lr": 1.0})
    first = open_run(cfg, resume=False)
    first.log({"event": "x"})
    stored = json.loads((first.path / "config.json").read_text())
    assert stored["run"]["name"] == first.path.name  # the report's config names the run
    time.sleep(1.1)  # the next timed name differs
    second = open_run(cfg, resume=False)
    second.log({"event": "y"})
    time.sleep(1.1)
    other = ml_collections.ConfigDict(cfg.to_dict())
    other.lr = 3.0
    newest = open_run(other, resume=False)  # newer, but another config
    newest.log({"event": "z"})
    assert len({first.path, second.path, newest.path}) == 3
    assert open_run(cfg, resume=True).path == second.path
    assert open_run(other, resume=True).path == newest.path
    named = ml_collections.ConfigDict(cfg.to_dict())
    named.run.name = first.path.name
    assert open_run(named, resume=True).path == first.path
    named.lr = 2.0
    with pytest.raises(ValueError, match="differs"):
        open_run(named, resume=True)
    (newest.path / "config.json").write_text('{"run": ')  # a torn write elsewhere
    assert open_run(cfg, resume=True).path == second.path
    (second.path / "config.json").write_text('{"run": ')  # and in the folder opened
    with pytest.raises(ValueError, match=f"{second.path.name}/config.json: not valid JSON"):
        RunFolder(tmp_path, "exp", second.path.name, cfg, resume=True)


def test_stage_links_survive_moving_the_project(tmp_path):
    entry = tmp_path / "project" / "runs" / "cache" / "stages" / "abc"
    entry.mkdir(parents=True)
    (entry / "stage.json").write_text("{}")
    run_ckpt = tmp_path / "project" / "runs" / "demo" / "r1" / "checkpoints" / "align"
    link(run_ckpt, entry)
    link(run_ckpt, entry)  # linking again to the same entry is a no-op
    moved = tmp_path / "moved"
    (tmp_path / "project").rename(moved)
    assert (moved / "runs" / "demo" / "r1" / "checkpoints" / "align" / "stage.json").exists()
    with pytest.raises(FileExistsError):
        link(moved / "runs" / "demo" / "r1" / "checkpoints" / "align", moved / "elsewhere")
    outside = tmp_path / "fast_disk" / "abc"  # a cache outside the runs root
    outside.mkdir(parents=True)
    other = moved / "runs" / "demo" / "r2" / "checkpoints" / "align"
    link(other, outside)
    assert os.readlink(other) == str(outside.resolve())


def test_incomplete_stage_needs_resume(tmp_path):
    cfg = base.get_config()
    key = stage_key("src", cfg.align, cfg.model, ROWS)
    (tmp_path / "stages" / key).mkdir(parents=True)
    with pytest.raises(IncompleteStageError, match="--resume"):
        train_stage(label="a", source="src", source_key="src", rows=ROWS,
                    stage_cfg=cfg.align, model_cfg=cfg.model, cache_root=tmp_path)


def test_a_stage_another_process_is_training_is_waited_for_not_refused(tmp_path):
    cfg = base.get_config()
    key = stage_key("src", cfg.align, cfg.model, ROWS)
    entry = tmp_path / "stages" / key
    entry.mkdir(parents=True)  # unfinished, as while the other process trains it
    locked, finished = threading.Event(), {"summary": {"steps": 3}, "complete": True}

    def other_process():
        with stage_lock(entry):  # a separate open file: flock excludes it like a process
            locked.set()
            time.sleep(0.5)
            (entry / "stage.json").write_text(json.dumps(finished))

    worker = threading.Thread(target=other_process)
    worker.start()
    locked.wait()
    _, path, summary = train_stage(label="a", source="src", source_key="src", rows=ROWS,
                                   stage_cfg=cfg.align, model_cfg=cfg.model,
                                   cache_root=tmp_path)
    worker.join()
    assert path == entry and summary == {"steps": 3, "cache_hit": True}


def test_outcomes_leave_out_unpooled_sets():
    from research.pipeline.report import outcomes

    recs = [{"set": "benign", "uid": "a", "role": "benign", "refused": True},
            {"set": "edgy", "uid": "b", "role": "benign", "refused": True, "pooled": False}]
    assert outcomes(recs, "over_refusal_rate") == {"benign|a": 1.0}


def test_paired_difference_and_its_verdict():
    a = {str(i): 1.0 for i in range(50)}
    b = {str(i): 0.0 for i in range(50)}
    d = paired_difference(a, b)
    assert (d["value"], d["ci_low"], d["n"]) == (-100.0, -100.0, 50)
    assert -100.0 < d["ci_high"] < -80.0  # never zero width, even when every pair agrees
    assert "significant at 95%" in effect_sentence("x", "m", d)
    mixed = {str(i): float(i % 2) for i in range(50)}
    same = paired_difference(mixed, dict(mixed))
    assert same["value"] == 0 and "NOT significant" in effect_sentence("x", "m", same)
    assert paired_difference(a, {"zz": 1.0})["n"] == 0


def test_sweep_grid_and_best_safe_cell():
    cells = grid(ml_collections.ConfigDict(dict(lrs=(1e-4, 1e-3), batch_sizes=(4,),
                                                steps=(2, 4), ema_betas=(0.0, 0.9))))
    assert len(cells) == 8 and len({tuple(c.items()) for c in cells}) == 8
    scored = [dict(label="a", harmful_score=5.0, task_accuracy=60.0),
              dict(label="b", harmful_score=30.0, task_accuracy=90.0),
              dict(label="c", harmful_score=10.0, task_accuracy=80.0)]
    assert best_safe_cell(scored, 20.0)["label"] == "c"
    assert best_safe_cell(scored, 1.0) is None


def test_demo_config_keeps_benign_at_least_as_plentiful_as_refusals():
    cfg = demo.get_config()
    assert cfg.data.n_align_benign_prompts >= cfg.data.n_align_harmful
    assert cfg.finetune.p_values == (0.1,) and cfg.finetune.ema_betas[0] == 0.0


def test_eval_sets_read_the_configured_held_out_split():
    from research.data.sources import load_source
    from research.data.splits import select_split
    from research.pipeline.data import eval_sets

    cfg = demo.get_config()
    cfg.eval.n_harmful, cfg.eval.n_benign, cfg.eval.n_task = 12, 12, 8
    prompts = {}
    for split in ("val", "test"):
        cfg.eval.split = split
        sets = eval_sets(cfg, {})
        prompts[split] = {r.prompt for s in sets for r in s.rows}
        assert all(len(s.rows) > 0 for s in sets)
        for s in sets:
            for source in {r.source for r in s.rows}:
                held = {r.uid for r in select_split(load_source(source)[0], split)}
                assert {r.uid for r in s.rows if r.source == source} <= held
    assert not prompts["val"] & prompts["test"]
    cfg.eval.split = "train"
    with pytest.raises(ValueError, match="eval.split = 'train'"):
        eval_sets(cfg, {})


@pytest.mark.parametrize("ps", [(0.1,), (0.0, 0.05, 0.1, 0.2)])
def test_series_at_the_same_p_are_drawn_apart_and_within_their_p(ps):
    from research.pipeline.report import series_shifts

    shifts, gap = series_shifts(4, ps)
    assert len(set(shifts)) == 4 and abs(sum(shifts)) < 1e-12
    assert max(abs(s) for s in shifts) < gap / 2
    assert gap == pytest.approx(0.1 if len(ps) == 1 else 0.05)


def test_studies_refuse_a_multi_process_launch(monkeypatch):
    import jax

    from research.pipeline.scripts import require_one_process

    require_one_process()  # this test process: one process
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(RuntimeError, match="launched as 2 processes.*one host"):
        require_one_process()


def test_studies_that_select_evaluate_on_val_and_the_demo_reports_test():
    assert optimization_sweep.get_config().eval.split == "val"  # it picks a best cell
    assert demo.get_config().eval.split == "test"
