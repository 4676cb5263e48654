"""Pieces every config-driven study script repeats: its command line (`--config FILE`
with `--config.field=value` overrides, `--resume`), its progress lines, its run folder,
the base model with the study's data, stage 1 (align the base model, cached, linked into
the run folder) and the stage-2 config block of one fine-tune.

Used by experiments/harmful_finetuning.py, experiments/optimization_sweep.py and
experiments/benign_outliers.py, so equal configs give the same stage labels and cache
keys in all three (scripts never import from one another).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import ml_collections

from research.data.rows import Row
from research.models.loading import load_pretrained
from research.pipeline import data as study_data
from research.pipeline.runs import RunFolder, default_run_name, latest_run_name
from research.pipeline.stages import base_model_key, link, train_stage
from research.training.sharding import maybe_initialize_distributed, mesh_from_config


class Clock:
    """Elapsed-time progress lines (stages in between show their own bars)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def say(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", flush=True)


def open_run(cfg: ml_collections.ConfigDict, resume: bool) -> RunFolder:
    """The config's run folder. With `run.name` empty: a new folder named by time, or
    with `resume` the latest folder of the same config (so `--resume` alone continues an
    interrupted `make demo`; a new one when there is none)."""
    name = cfg.run.name
    if not name and resume:
        name = latest_run_name(cfg.run.root, cfg.run.experiment, cfg)
        print("--resume without --config.run.name: " + (
            f"continuing the latest run of this config, {name}" if name else
            "no run of this config to continue, starting a new one"), flush=True)
    return RunFolder(cfg.run.root, cfg.run.experiment, name or default_run_name(), cfg,
                     resume=resume)


def start_run(cfg: ml_collections.ConfigDict, resume: bool) -> tuple[Clock, RunFolder, Path]:
    """(a clock, the run folder, the stage cache) at the start of a study, with the first
    progress line."""
    clock, run = Clock(), open_run(cfg, resume)
    clock.say(f"run folder {run.path}; loading {cfg.model.source} and building data "
              "(base-model answers are generated once and cached)")
    return clock, run, Path(cfg.run.cache_dir)


def base_and_data(cfg: ml_collections.ConfigDict, cache: Path,
                  generate_fn: Callable | None = None) -> tuple[Any, Any, str, dict[str, Any]]:
    """(base model, tokenizer, base-model key, the study's data); the base model's
    answers are generated once and cached under `cache/generated`."""
    source = str(cfg.model.source)
    model, tokenizer = load_pretrained(source, dtype=cfg.model.dtype)
    key = base_model_key(source, cfg.model)
    data = study_data.build_study_data(cfg, model, tokenizer, key,
                                       cache_dir=str(cache / "generated"),
                                       generate_fn=generate_fn)
    return model, tokenizer, key, data


def align_stage(cfg: ml_collections.ConfigDict, run: RunFolder, *, base_source: str,
                base_key: str, rows: Sequence[Row], cache: Path, resume: bool,
                progress: bool, arm: str | None = None,
                block: ml_collections.ConfigDict | None = None) -> tuple[str, Path, dict]:
    """Stage 1 exactly as the main study runs it, so equal configs share one entry:
    stage `align_<arm>` (default arm: `align.method`) trains `block` (default
    `cfg.align`), is linked into the run folder and logged."""
    stage = f"align_{arm if arm is not None else cfg.align.method}"
    key, entry, summary = train_stage(label=stage, source=base_source, source_key=base_key,
                                      rows=rows, stage_cfg=cfg.align if block is None else block,
                                      model_cfg=cfg.model, cache_root=cache, resume=resume,
                                      progress=progress, mesh=mesh_from_config(cfg.get("mesh")))
    link(run.checkpoint(stage), entry)
    run.log({"event": "stage", "stage": stage, "key": key, **summary})
    return key, entry, summary


def finetune_block(cfg: ml_collections.ConfigDict, p: float,
                   ema_beta: float) -> ml_collections.ConfigDict:
    """The stage-2 config of one grid cell (grid fields removed so cache keys depend
    only on what trains this cell)."""
    block = ml_collections.ConfigDict(cfg.finetune.to_dict())
    for grid_field in ("p_values", "starts", "ema_betas", "n"):
        del block[grid_field]
    block.n, block.p = int(cfg.finetune.n), float(p)
    block.optimizer.ema_beta = float(ema_beta)
    return block


def require_one_process() -> None:
    """Studies run as one process (with any number of its devices): every process of a
    multi-host job would write the same run folder, stage cache and `hf/` export, and an
    fsdp-sharded export spanning hosts cannot be gathered by one of them. Refuse clearly
    instead of racing; multi-host training itself works through `research.training`."""
    if jax.process_count() > 1:
        raise RuntimeError(
            f"this study was launched as {jax.process_count()} processes; the study scripts "
            "write run folders, stage caches and exports from a single process, so run "
            "them on one host (all of its devices are used). Multi-host training works "
            "through research.training (make_sft_step, train, a mesh from make_mesh).")


def run_config_script(run: Callable[..., Any], default_config: str) -> None:
    """Define the flags and run `run(config, resume=...)` under absl (from `__main__`;
    flags are defined only there, so the study modules can be imported together)."""
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", default_config, "study config file")
    flags.DEFINE_bool("resume", False, "continue an existing run folder / stage")

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.basicConfig(level=logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        maybe_initialize_distributed()  # a multi-host launch joins its job first
        require_one_process()
        run(flags.FLAGS.config, resume=flags.FLAGS.resume)

    app.run(main)
