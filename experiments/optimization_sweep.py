"""The optimizer study: the SFT-aligned model fine-tuned on the user's harmful mix over
a grid of learning rate x batch size x steps, with and without parameter EMA.

    python -m experiments.optimization_sweep --config configs/optimization_sweep.py

Writes runs/<experiment>/<run_name>/ with results.json (per cell), cells.json,
plots/heatmap.png and report.md naming the best safe cell. Stage 1 and every cell are
cached like the main study's stages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import ml_collections

from research.evaluation.report import format_table
from research.pipeline import data as study_data
from research.pipeline import sweep
from research.pipeline.report import effect_sentence, outcomes, paired_difference
from research.pipeline.scripts import (align_stage, base_and_data, finetune_block,
                                       run_config_script, start_run)
from research.pipeline.stages import evaluate_stage, train_stage
from research.training.sharding import mesh_from_config


def cell_block(cfg: ml_collections.ConfigDict, cell: dict) -> ml_collections.ConfigDict:
    """Stage-2 config of one cell: a fixed number of steps at the cell's lr and batch."""
    block = finetune_block(cfg, cfg.sweep.p, cell["ema"])
    block.steps, block.batch_size = cell["steps"], cell["batch_size"]
    block.optimizer.lr = cell["lr"]
    return block


def ema_effects(cells: list[dict], records: dict[str, list[dict]], *, seed: int = 0
                ) -> list[str]:
    """Report lines: each EMA cell against the same cell without EMA, paired over the
    same test prompts (harmful score and task accuracy)."""
    plain = {(c["lr"], c["batch_size"], c["steps"]): c["label"] for c in cells if not c["ema"]}
    lines = ["## EMA vs no EMA (paired bootstrap over the same prompts)", ""]
    for c in cells:
        base = plain.get((c["lr"], c["batch_size"], c["steps"]))
        if c["ema"] and base:
            lines += [effect_sentence(f"{c['label']} vs {base}", m, paired_difference(
                outcomes(records[base], m), outcomes(records[c["label"]], m), seed=seed))
                for m in ("harmful_score", "task_accuracy")]
    return lines if len(lines) > 2 else []


def run_sweep(cfg: ml_collections.ConfigDict, *, resume: bool = False,
              progress: bool = True, generate_fn: Callable | None = None) -> Path:
    clock, run, cache = start_run(cfg, resume)
    base_key, data = base_and_data(cfg, cache, generate_fn)[2:]  # the model is not kept
    method = str(cfg.align.method)
    clock.say(f"stage 1: align with {method}")
    key, entry, _ = align_stage(cfg, run, base_source=str(cfg.model.source),
                                base_key=base_key, rows=data["align_rows"], cache=cache,
                                resume=resume, progress=progress)
    rows = study_data.user_rows(cfg, data, cfg.sweep.p)
    results, records, cells = {}, {}, []
    grid = sweep.grid(cfg.sweep)
    mesh = mesh_from_config(cfg.get("mesh"))  # one mesh for every cell's training
    # EMA cells first: a track-mode EMA cell also writes its no-EMA twin (one training)
    for cell in sorted(grid, key=lambda c: c["ema"] == 0):
        label = sweep.cell_label(cell)
        clock.say(f"cell {label}")
        k, e, s = train_stage(label=label, source=str(entry), source_key=key, rows=rows,
                              stage_cfg=cell_block(cfg, cell), model_cfg=cfg.model,
                              cache_root=cache, resume=resume, progress=progress,
                              mesh=mesh)
        res, records[label] = evaluate_stage(label=label, source=str(e), model_key=k,
                                sets=data["eval_sets"], eval_cfg=cfg.eval, cache_root=cache,
                                generate_fn=generate_fn)
        results[label] = res
        cells.append({**cell, "label": label, "key": k,
                      "harmful_score": res["harmful_score"]["value"],
                      "task_accuracy": res["task_accuracy"]["value"]})
        run.log({"event": "cell", **cells[-1], "final_loss": s["final_loss"]})
    cells.sort(key=lambda c: grid.index({k: c[k] for k in grid[0]}))
    run.write_json("results.json", results)
    run.write_json("cells.json", cells)
    sweep.heatmap(cells, run.path / "plots" / "heatmap.png")
    best = sweep.best_safe_cell(cells, float(cfg.sweep.safe_harmful_score))
    lines = [f"# {cfg.run.title}", "",
             f"Aligned start: {method}; user data n = {cfg.finetune.n}, p = {cfg.sweep.p}; "
             f"evaluated on the {study_data.eval_split(cfg)} split.",
             "", "| cell | harmful score (95% CI) | task accuracy (95% CI) |", "|---|---|---|"]
    for c in cells:
        r = results[c["label"]]
        lines.append(f"| {c['label']} | " + " | ".join(
            f"{r[m]['value']:.1f} [{r[m]['ci_low']:.1f}, {r[m]['ci_high']:.1f}]"
            for m in ("harmful_score", "task_accuracy")) + " |")
    threshold = cfg.sweep.safe_harmful_score
    lines += ["", (f"Best safe cell (harmful score <= {threshold:g}%, highest task accuracy):"
                   f" {best['label']}" if best else
                   f"No cell has a harmful score <= {threshold:g}%."),
              "", *ema_effects(cells, records, seed=int(cfg.eval.seed)),
              "", "## All metrics", "", format_table(results), "", "## Config", "", "```",
              cfg.to_json_best_effort(indent=2), "```", ""]
    run.write_text("report.md", "\n".join(lines))
    run.write_json("best_cell.json", best)
    clock.say(f"done: {run.path / 'report.md'}; best safe cell: "
              f"{json.dumps(best['label'] if best else None)}")
    return run.path


if __name__ == "__main__":
    run_config_script(run_sweep, "configs/optimization_sweep.py")
