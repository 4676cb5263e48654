"""Stages of the study with an on-disk cache keyed by a hash of what determines them.

A training stage's key hashes its input model's key, its config block, the model
block (LoRA or full) and the exact training rows; an evaluation's key hashes the model's
key, the prompt sets and the settings. A finished entry (`stage.json` with
`complete: true`) is reused as is; an unfinished one is continued with `resume=True`
and otherwise refused (never silently restarted over). Entries live under the cache
root; the run folder links to them (`checkpoints/<stage>` -> entry), and each entry's
`hf/` export is what `load_pretrained` and `research.evaluate` read.

Studies may run side by side on one cache (a rho sweep next to the main study): a
process training an entry holds an exclusive lock on it (`<key>.lock`, flock), so a second
process that needs the same stage waits and then finds it finished, instead of
refusing it as unfinished or training it twice.

A parameter EMA in `track` mode does not change the trajectory, only which weights are
exported, so a tracking stage also writes its raw final weights as the finished entry of
the same stage without EMA (its "raw twin"): a grid with and without EMA trains once.

A stage whose block has `drift.enabled` also records the harmful embedding drift curve
of the model it trains against its start, on `drift_rows`, every `drift.every` steps
(`drift.jsonl`, through a training-loop hook), and the exported model's drift in its
summary; the drift block and rows are then part of the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from research.analysis.drift import make_drift_curve
from research.data.batches import BatchIterator, collate, plan_epoch
from research.data.chat import format_examples
from research.data.rows import Row
from research.evaluation.pipeline import (DEFAULT_JUDGE, EvalSettings, PromptSet, make_records,
                                         summarize)
from research.evaluation.refusal import REFUSAL_LIST_VERSION
from research.evaluation.verdicts import get_judge
from research.models.loading import load_pretrained
from research.models.lora import LoRAConfig
from research.models.checkpoints import save_hf_folder
from research.pipeline.data import rows_fingerprint
from research.pipeline.hashing import config_hash, to_plain
from research.pipeline.registry import StepContext, build_method
from research.training.checkpointing import Checkpointer
from research.training.ema import ema_params, find_ema_state
from research.training.loop import CurveRecorder, train
from research.training.optim import make_optimizer, make_schedule
from research.training.sharding import mesh_from_config, shard_params
from research.training.state import split_model

log = logging.getLogger(__name__)
STAGE_FORMAT = 1


class IncompleteStageError(RuntimeError):
    """A cache entry was started but not finished, and resuming was not asked for."""


def lora_config(model_cfg: ml_collections.ConfigDict) -> LoRAConfig | None:
    if model_cfg.finetune_mode != "lora":
        return None
    return LoRAConfig(rank=int(model_cfg.lora_rank), alpha=float(model_cfg.lora_alpha),
                      targets=tuple(model_cfg.lora_targets))


def planned_steps(stage_cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """`steps` if > 0, else ceil(epochs * steps per epoch)."""
    if int(stage_cfg.get("steps", 0)) > 0:
        return int(stage_cfg.steps)
    return max(1, math.ceil(float(stage_cfg.epochs) * steps_per_epoch))


def link(run_path: Path, entry: Path) -> None:
    """Point `run_path` (`<root>/<experiment>/<run>/checkpoints/<stage>`) at a cache entry
    (replacing only an earlier link to it). The link is relative when the entry lies in
    the same runs root (the default `runs/cache`), so a project moved or copied with its
    `runs/` keeps working links; a cache elsewhere gets an absolute link."""
    run_path.parent.mkdir(parents=True, exist_ok=True)
    if run_path.is_symlink():
        if run_path.resolve() == entry.resolve():
            return
        raise FileExistsError(f"{run_path} links to {run_path.resolve()}, not {entry}")
    if run_path.exists():
        raise FileExistsError(f"{run_path} exists; a run folder is never overwritten")
    target, here = entry.resolve(), run_path.parent.resolve()
    if target.is_relative_to(here.parents[2]):
        target = Path(os.path.relpath(target, here))
    run_path.symlink_to(target, target_is_directory=True)


def _read_entry(entry: Path) -> dict | None:
    meta = entry / "stage.json"
    return json.loads(meta.read_text()) if meta.exists() else None


def stage_key(source_key: str, stage_cfg: ml_collections.ConfigDict,
              model_cfg: ml_collections.ConfigDict, rows: Sequence[Row],
              drift_rows: Sequence[Row] = ()) -> str:
    """The cache key of a training stage: everything that determines its weights (and
    its drift curve's rows, when it records one)."""
    extra = [rows_fingerprint(drift_rows)] if drift_rows else []
    return config_hash("train", STAGE_FORMAT, source_key, stage_cfg, model_cfg,
                       rows_fingerprint(rows), *extra)


def drift_enabled(stage_cfg: ml_collections.ConfigDict) -> bool:
    return bool(stage_cfg.get("drift") and stage_cfg.drift.get("enabled", False))


def drift_batches(examples: Sequence[Any], batch_size: int, pad_id: int,
                  buckets: Sequence[int]) -> list[dict]:
    """Each example once, in length buckets, without padding rows (fixed, so every
    point of a curve is measured on the same batches)."""
    plan = plan_epoch([len(e) for e in examples], batch_size, buckets, seed=0, epoch=0)
    return [collate(examples, idx, length, len(idx), pad_id) for length, idx in plan]


def curve_line(point: dict) -> dict:
    """A drift point as a line of drift.jsonl (per-example sums stay in the summary)."""
    return {k: v for k, v in point.items()
            if k not in ("sum_sq_per_example", "ref_sum_sq_per_example")}


def stage_drift_curve(stage_cfg: ml_collections.ConfigDict, drift_rows: Sequence[Row],
                      tokenizer: Any, graphdef: nnx.GraphDef, start: nnx.State,
                      frozen: nnx.State) -> tuple[Callable[[nnx.State], dict], dict]:
    """`make_drift_curve` on the drift rows, formatted like the stage's training rows
    (with the format counts: rows too long for `max_length` are skipped, and said so)."""
    examples, counts = format_examples(tokenizer, drift_rows,
                                       max_length=int(stage_cfg.max_length))
    batches = drift_batches(examples, int(stage_cfg.drift.batch_size),
                            int(tokenizer.pad_token_id), tuple(stage_cfg.buckets))
    curve = make_drift_curve(graphdef, frozen, start, batches, site=str(stage_cfg.drift.site))
    return curve, counts.to_dict()


def train_stage(*, label: str, source: str, source_key: str, rows: Sequence[Row],
                stage_cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                cache_root: Path, resume: bool = False, progress: bool = True,
                drift_rows: Sequence[Row] = (), mesh: Mesh | None = None
                ) -> tuple[str, Path, dict]:
    """Fine-tune `source` on `rows` (or reuse the cached result); returns (key, entry
    folder, summary). The entry holds orbax/ (the final checkpoint once finished), hf/
    (merged export), metrics.jsonl, stage.json and, with drift enabled, drift.jsonl
    (`drift_rows` are the examples).
    Training runs on `mesh` (default: data parallel over all devices); the mesh is not
    part of the cache key, since it changes no result beyond float rounding."""
    if drift_enabled(stage_cfg) and not drift_rows:
        raise ValueError(f"stage {label}: drift is enabled but no drift rows were given")
    drift_rows = drift_rows if drift_enabled(stage_cfg) else ()
    key = stage_key(source_key, stage_cfg, model_cfg, rows, drift_rows)
    entry = cache_root / "stages" / key
    with stage_lock(entry, label):
        return _train_entry(label=label, source=source, source_key=source_key, key=key,
                            entry=entry, rows=rows, stage_cfg=stage_cfg,
                            model_cfg=model_cfg, resume=resume, progress=progress,
                            drift_rows=drift_rows, mesh=mesh)


@contextlib.contextmanager
def stage_lock(entry: Path, label: str = ""):
    """Hold an exclusive lock on `entry` (blocking while another process holds it)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(entry.name + ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("stage %s: another process is training %s; waiting for it", label, entry)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_entry(*, label: str, source: str, source_key: str, key: str, entry: Path,
                 rows: Sequence[Row], stage_cfg: ml_collections.ConfigDict,
                 model_cfg: ml_collections.ConfigDict, resume: bool, progress: bool,
                 drift_rows: Sequence[Row], mesh: Mesh | None) -> tuple[str, Path, dict]:
    """train_stage's body, run under the entry's lock."""
    meta = _read_entry(entry)
    if meta is not None and meta.get("complete"):
        log.info("stage %s: cache hit %s", label, entry)
        return key, entry, dict(meta["summary"], cache_hit=True)
    if entry.exists() and not resume:
        raise IncompleteStageError(
            f"stage {label}: {entry} holds an unfinished run of this exact stage; pass "
            f"--resume to continue it, or delete the folder to start over")
    entry.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, tokenizer = load_pretrained(source, dtype=model_cfg.dtype,
                                       lora=lora_config(model_cfg))
    examples, counts = format_examples(tokenizer, rows, max_length=int(stage_cfg.max_length))
    data = BatchIterator(examples, int(stage_cfg.batch_size), int(tokenizer.pad_token_id),
                         seed=int(stage_cfg.seed), buckets=tuple(stage_cfg.buckets))
    num_steps = planned_steps(stage_cfg, data.steps_per_epoch)
    opt_cfg = ml_collections.ConfigDict(stage_cfg.optimizer.to_dict())
    opt_cfg.total_steps = num_steps
    optimizer, schedule = make_optimizer(opt_cfg), make_schedule(opt_cfg)
    graphdef, trainable, frozen = split_model(model, model_cfg.finetune_mode)
    ctx = StepContext(graphdef, optimizer, schedule, stage_cfg.method_config,
                      accum_steps=int(stage_cfg.accum_steps),
                      clip_norm=float(stage_cfg.clip_norm))
    # built before training: the start's activations are the drift's reference
    curve, drift_counts = (stage_drift_curve(stage_cfg, drift_rows, tokenizer, graphdef,
                                             trainable, frozen) if drift_rows else (None, {}))
    hooks = [] if curve is None else [CurveRecorder(
        lambda s: curve_line(curve(s.params)), entry / "drift.jsonl",
        every=int(stage_cfg.drift.every), last_step=num_steps)]
    step_fn, state = build_method(stage_cfg.method, ctx, trainable, int(stage_cfg.seed))
    mesh = mesh_from_config() if mesh is None else mesh
    state, frozen = shard_params(mesh, state), shard_params(mesh, frozen)
    with Checkpointer(entry / "orbax", save_every=int(stage_cfg.save_every)) as ckpt:
        state = train(step_fn, state, frozen, data, num_steps=num_steps,
                      metrics_path=entry / "metrics.jsonl", checkpointer=ckpt,
                      resume=resume, progress=progress, desc=label, hooks=hooks, mesh=mesh)
        ckpt.keep_only_latest()  # the final checkpoint; the periodic ones served resuming
    params = state.params
    use_ema = find_ema_state(state.opt_state) is not None
    if use_ema:  # evaluate and export the average (both modes' model)
        params = jax.tree.map(lambda a, p: a.astype(p.dtype), ema_params(state.opt_state),
                              params)
    trained = nnx.merge(graphdef, params, frozen)
    if (entry / "hf").exists():
        shutil.rmtree(entry / "hf")  # a partial export of this same unfinished entry
    save_hf_folder(trained, entry / "hf", tokenizer)
    summary = {"label": label, "source": source, "steps": num_steps,
               "examples": len(examples), "format_counts": counts.to_dict(),
               "truncated": counts.truncated, "steps_per_epoch": data.steps_per_epoch,
               "final_loss": _last_loss(entry / "metrics.jsonl"),
               "exported_ema_average": use_ema,
               "train_seconds": round(time.perf_counter() - start, 1),
               "mesh": dict(mesh.shape), "cache_hit": False}
    recomputed = _metric_mean(entry / "metrics.jsonl", "eps_recomputed")
    if recomputed is not None:  # accelerated Vaccine: share of steps that ran pass 1
        summary["eps_recomputed_fraction"] = recomputed
    if curve is not None:  # the exported model (the EMA average in track mode)
        summary["drift"] = dict(curve(params), format_counts=drift_counts)
    if use_ema and opt_cfg.ema_mode == "track":  # pulled fast weights are no no-EMA run
        twin_summary = dict(summary, label=f"{label} (raw twin)", exported_ema_average=False,
                            trained_with_ema_stage=key, train_seconds=0.0)
        if curve is not None:
            twin_summary["drift"] = dict(curve(state.params), format_counts=drift_counts)
        _write_raw_twin(label=label, source_key=source_key, rows=rows, stage_cfg=stage_cfg,
                        model_cfg=model_cfg, drift_rows=drift_rows, entry=entry,
                        tokenizer=tokenizer, trained=nnx.merge(graphdef, state.params, frozen),
                        summary=twin_summary)
    (entry / "stage.json").write_text(json.dumps(
        {"key": key, "complete": True, "config": to_plain(stage_cfg),
         "model": to_plain(model_cfg), "source_key": source_key, "summary": summary},
        indent=2) + "\n")
    return key, entry, summary


def _write_raw_twin(*, label: str, source_key: str, rows: Sequence[Row],
                    stage_cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                    drift_rows: Sequence[Row], entry: Path, tokenizer: Any,
                    trained: nnx.Module, summary: dict) -> None:
    """Write the raw (un-averaged) weights of a track-mode EMA stage as the finished
    entry of the same stage with `ema_beta = 0`, unless that entry exists already. It
    has the hf/ export, the metrics and drift curves (the raw trajectory's), no orbax/."""
    twin_cfg = ml_collections.ConfigDict(stage_cfg.to_dict())
    twin_cfg.optimizer.ema_beta = 0.0
    twin_key = stage_key(source_key, twin_cfg, model_cfg, rows, drift_rows)
    twin = entry.parent / twin_key
    with stage_lock(twin, f"{label} (raw twin)"):
        if twin.exists():  # finished, or an unfinished run of its own to resume
            return
        tmp = entry.parent / f"{twin_key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_hf_folder(trained, tmp / "hf", tokenizer)
        for name in ("metrics.jsonl", "drift.jsonl"):
            if (entry / name).exists():
                shutil.copy(entry / name, tmp / name)
        (tmp / "stage.json").write_text(json.dumps(
            {"key": twin_key, "complete": True, "config": to_plain(twin_cfg),
             "model": to_plain(model_cfg), "source_key": source_key, "summary": summary},
            indent=2) + "\n")
        tmp.rename(twin)
    log.info("stage %s: wrote its raw weights as the no-EMA stage %s", label, twin)


def _last_loss(path: Path) -> float | None:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["loss"] if lines else None


def _metric_mean(path: Path, name: str) -> float | None:
    """The mean of step metric `name` over the run's metric lines (None if absent)."""
    values = [json.loads(line).get(name) for line in path.read_text().splitlines()
              if line.strip()]
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 6) if values else None


def evaluate_stage(*, label: str, source: str, model_key: str, sets: Sequence[PromptSet],
                   eval_cfg: ml_collections.ConfigDict, cache_root: Path,
                   loaded: tuple[Any, Any] | None = None,
                   generate_fn: Callable | None = None) -> tuple[dict, list[dict]]:
    """Metrics entry and per-prompt records. The completions are cached by (model key,
    prompts, settings); the verdicts are taken afresh by `eval.judge`, so changing or
    recalibrating the judge never regenerates.

    Safety sets and task sets are generated with their own `max_new_tokens` (refusals
    show in the first tokens; task answers need only a few), then scored together.
    """
    groups = {"safety": [s for s in sets if s.role != "task"],
              "task": [s for s in sets if s.role == "task"]}
    settings = {
        "safety": EvalSettings(max_new_tokens=int(eval_cfg.max_new_tokens),
                               batch_size=int(eval_cfg.batch_size), seed=int(eval_cfg.seed)),
        "task": EvalSettings(max_new_tokens=int(eval_cfg.task_max_new_tokens),
                             batch_size=int(eval_cfg.batch_size), seed=int(eval_cfg.seed))}
    prompts = [[s.name, [[r.uid, r.prompt, r.answer] for r in s.rows]] for s in sets]
    key = config_hash("completions", STAGE_FORMAT, model_key, prompts,
                      {k: dataclasses.asdict(v) for k, v in settings.items()})
    cache_file = cache_root / "evals" / f"{key}.json"
    judge = get_judge(str(eval_cfg.get("judge", DEFAULT_JUDGE)))
    if cache_file.exists():
        cached = json.loads(cache_file.read_text())
        completions, timing = cached["completions"], dict(cached["timing"], cache_hit=True)
    else:
        if generate_fn is None:
            from research.models.generate import generate as generate_fn
        model, tokenizer = loaded if loaded is not None else load_pretrained(source)
        start = time.perf_counter()
        completions = {}
        for group, chosen in groups.items():
            s = settings[group]
            completions[group] = generate_fn(
                model, tokenizer, [r.prompt for x in chosen for r in x.rows],
                max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                seed=s.seed, batch_size=s.batch_size) if chosen else []
        timing = {"prompts": sum(len(c) for c in completions.values()),
                  "generation_seconds": round(time.perf_counter() - start, 2)}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"label": label, "completions": completions,
                                   "timing": timing}))
        tmp.replace(cache_file)
        timing = dict(timing, cache_hit=False)
    records = [rec for group, chosen in groups.items() if chosen
               for rec in make_records(chosen, completions[group], settings[group], judge)]
    entry = summarize(records, seed=int(eval_cfg.seed))
    entry.update(refusal_list_version=REFUSAL_LIST_VERSION, model=source,
                 judge={"name": judge.name, "version": judge.version},
                 settings={k: dataclasses.asdict(v) for k, v in settings.items()},
                 timing=timing)
    return entry, records


def base_model_key(source: str, model_cfg: ml_collections.ConfigDict) -> str:
    """Cache key of an untrained source: its name plus, for a folder, its weights' stamp."""
    path = Path(source)
    stamp = None
    if path.exists():
        files = sorted(path.rglob("*.safetensors"))
        stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return config_hash("base", str(source), stamp, model_cfg.dtype)

