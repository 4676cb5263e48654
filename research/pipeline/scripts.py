"""Pieces every config-driven study script repeats: its command line (`--config FILE`
with `--config.field=value` overrides, `--resume`), its run folder, and stage 1 (align
the base model, cached, linked into the run folder).

experiments/harmful_finetuning.py and experiments/optimization_sweep.py still carry their
own copies of these lines; they can switch to these functions when next edited.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import ml_collections

from research.data.rows import Row
from research.pipeline.runs import RunFolder, default_run_name
from research.pipeline.stages import train_stage, link


def open_run(cfg: ml_collections.ConfigDict, resume: bool) -> RunFolder:
    """The config's run folder (named by time when `run.name` is empty)."""
    return RunFolder(cfg.run.root, cfg.run.experiment, cfg.run.name or default_run_name(),
                     cfg, resume=resume)


def align_stage(cfg: ml_collections.ConfigDict, run: RunFolder, *, base_source: str,
                base_key: str, rows: Sequence[Row], cache: Path, resume: bool,
                progress: bool) -> tuple[str, Path, dict]:
    """Stage 1 exactly as the main study runs it, so equal configs share one entry."""
    stage = f"align_{cfg.align.method}"
    key, entry, summary = train_stage(label=stage, source=base_source, source_key=base_key,
                                      rows=rows, stage_cfg=cfg.align, model_cfg=cfg.model,
                                      cache_root=cache, resume=resume, progress=progress)
    link(run.checkpoint(stage), entry)
    run.log({"event": "stage", "stage": stage, "key": key, **summary})
    return key, entry, summary


def run_config_script(run: Callable[..., Any], default_config: str) -> None:
    """Define the flags and run `run(config, resume=...)` under absl (from `__main__`)."""
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", default_config, "study config file")
    flags.DEFINE_bool("resume", False, "continue an existing run folder / stage")

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.basicConfig(level=logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        run(flags.FLAGS.config, resume=flags.FLAGS.resume)

    app.run(main)
