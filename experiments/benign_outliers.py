"""Benign outliers (Self-Inf-N, DESIGN.md): do the benign examples with the largest
normalized self-influence break the aligned model's safety more than random benign ones?

    python -m experiments.benign_outliers --config configs/benign_outliers.py [--resume]

Stage 1 is the main study's alignment (same data building, same `align` block, so the
cached checkpoint is reused). A benign pool (train split, unused by stage 1, base-model
answers) is scored on the aligned model with Self-Inf and Self-Inf-N; four sets of k rows
are selected (Self-Inf-N top k after the top-pool cut and the trivial-answer filter, k
random, raw Self-Inf top k, k harmful rows with the base model's compliant answers).
Stage 2 fine-tunes the aligned model on each with the main study's `finetune` block;
stage 3 evaluates them. The run folder holds the selected sets (`selected/*.jsonl` with
scores and answer lengths), `pool_scores.jsonl`, results.json, records.jsonl, plots/
and report.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from research.data.chat import format_examples
from research.data.generated import model_generate_fn
from research.data.rows import Row
from research.evaluation.report import format_table, plot_metrics, write_results
from research.models.loading import load_pretrained
from research.outliers import report as outlier_report
from research.outliers.selection import (Selection, outlier_sets, save_selection,
                                         select_random)
from research.outliers.self_influence import Scores, make_scorer, score_examples
from research.pipeline import data as study_data
from research.pipeline import outlier_data, report
from research.pipeline.hashing import config_hash
from research.pipeline.runs import RunFolder
from research.pipeline.scripts import (align_stage, base_and_data, finetune_block,
                                       run_config_script, start_run)
from research.pipeline.stages import base_model_key, evaluate_stage, link, lora_config, train_stage
from research.training.sharding import mesh_from_config
from research.training.state import split_model

ARMS = ("self_inf_n", "random", "self_inf_raw", "harmful")
COMPARED = ("harmful_score", "over_refusal_rate", "task_accuracy")
Arm = tuple[Selection, list[Row], Scores]  # selection, the rows and scores it indexes


def score_rows(cfg: ml_collections.ConfigDict, source: str, source_key: str,
               rows: Sequence[Row], cache: Path) -> tuple[list[Row], Scores, dict]:
    """Self-Inf of `rows` on the model at `source`, formatted as stage 2 trains them
    (chat template, `finetune.max_length`); rows that cannot be formatted are dropped and
    counted. Cached by the model key, the parameter subset and the rows (chunking does
    not change scores, so the chunk size is not part of the key)."""
    o, f = cfg.outliers, cfg.finetune
    model_block = ml_collections.ConfigDict(dict(cfg.model.to_dict(),
                                                 finetune_mode=str(o.param_mode)))
    key = config_hash("self_inf", source_key, model_block, f.max_length, f.buckets,
                      study_data.rows_fingerprint(rows))
    path = cache / "scores" / f"{key}.json"
    if not path.exists():
        model, tok = load_pretrained(source, dtype=cfg.model.dtype,
                                     lora=lora_config(model_block))
        graphdef, trainable, frozen = split_model(model, str(o.param_mode))
        examples, counts = format_examples(tok, rows, max_length=int(f.max_length))
        s = score_examples(make_scorer(graphdef), trainable, frozen, examples,
                           chunk_size=int(o.chunk_size), pad_id=int(tok.pad_token_id),
                           buckets=tuple(f.buckets))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "uids": [e.uid for e in examples], "self_inf": s.self_inf.tolist(),
            "answer_tokens": s.answer_tokens.tolist(), "loss": s.loss.tolist(),
            "format_counts": counts.to_dict()}))
        tmp.replace(path)
    stored = json.loads(path.read_text())
    by_uid = {r.uid: r for r in rows}
    scores = Scores(np.asarray(stored["self_inf"], np.float64),
                    np.asarray(stored["answer_tokens"], np.int64),
                    np.asarray(stored["loss"], np.float64))
    return [by_uid[u] for u in stored["uids"]], scores, stored["format_counts"]


def select_sets(cfg: ml_collections.ConfigDict, pool: list[Row], pool_scores: Scores,
                harmful: list[Row], harmful_scores: Scores,
                harmful_considered: int) -> dict[str, Arm]:
    """Each arm's selection with the rows and scores its indices refer to."""
    o, k = cfg.outliers, int(cfg.outliers.k)
    if len(pool) < k:
        raise ValueError(f"the benign pool holds {len(pool)} usable rows, fewer than "
                         f"outliers.k = {k}; raise outliers.pool_n or lower outliers.k")
    picked = outlier_sets(pool_scores, [r.response for r in pool], k=k,
                          pool_size=int(o.top_pool), seed=int(o.seed),
                          filter_raw=bool(o.filter_raw))
    out = {name: (sel, pool, pool_scores) for name, sel in picked.items()}
    out["harmful"] = (Selection("harmful", np.arange(len(harmful)), harmful_considered,
                                0, k - len(harmful)), harmful, harmful_scores)
    return out


def score_and_select(cfg: ml_collections.ConfigDict, run: RunFolder, *, source: str,
                     source_key: str, pool: list[Row], harmful: list[Row], cache: Path,
                     overwrite: bool) -> tuple[dict[str, Arm], dict[str, dict], Scores]:
    """Score the pool and k random harmful rows on the aligned model, select the arms,
    save them; returns (arms, saved summaries, the pool's scores)."""
    k = int(cfg.outliers.k)
    draw = select_random("harmful", len(harmful), k=min(k, len(harmful)),
                         seed=int(cfg.outliers.seed))
    rows, scores, fmt = score_rows(cfg, source, source_key,
                                   pool + [harmful[i] for i in draw.indices], cache)
    is_pool = np.asarray([r.kind != "harmful" for r in rows])
    pool_rows, pool_scores = [r for r, p in zip(rows, is_pool) if p], scores.subset(is_pool)
    arms = select_sets(cfg, pool_rows, pool_scores, [r for r, p in zip(rows, is_pool) if not p],
                       scores.subset(~is_pool), len(harmful))
    everything = Selection("pool", np.arange(len(pool_rows)), len(pool_rows), 0, 0)
    saved = {"pool": save_selection(run.path / "pool_scores.jsonl", everything, pool_rows,
                                    pool_scores, overwrite=overwrite)}
    for name, (sel, arm_rows, arm_scores) in arms.items():
        saved[name] = save_selection(run.path / "selected" / f"{name}.jsonl", sel, arm_rows,
                                     arm_scores, overwrite=overwrite)
    run.write_json("selected/summary.json", {"format_counts": fmt, **saved})
    run.log({"event": "selected", "format_counts": fmt,
             **{n: s["answer_tokens"] for n, s in saved.items()}})
    return arms, saved | {"format_counts": fmt}, pool_scores


def run_study(cfg: ml_collections.ConfigDict, *, resume: bool = False, progress: bool = True,
              generate_fn: Callable | None = None) -> Path:
    """Data, stage 1, scoring and selection, stage 2 per arm, stage 3; the run folder."""
    clock, run, cache = start_run(cfg, resume)
    base_source = str(cfg.model.source)
    data, pool, harmful = build_data(cfg, cache, generate_fn)
    base_key = base_model_key(base_source, cfg.model)
    run.write_json("data_counts.json", data["counts"])
    run.log({"event": "data", "align_rows": len(data["align_rows"]), "benign_pool": len(pool),
             "harmful_pool": len(harmful)})
    clock.say(f"stage 1: align with {cfg.align.method} on {len(data['align_rows'])} rows")
    key, entry, _ = align_stage(cfg, run, base_source=base_source, base_key=base_key,
                                rows=data["align_rows"], cache=cache, resume=resume,
                                progress=progress)
    clock.say(f"scoring {len(pool)} benign rows and k harmful rows on the aligned model")
    arms, selected, pool_scores = score_and_select(
        cfg, run, source=str(entry), source_key=key, pool=pool, harmful=harmful, cache=cache,
        overwrite=resume)
    method = str(cfg.align.method)
    labels = {"aligned": method} | {arm: f"{method}+ft({arm})" for arm in ARMS}
    models = {"aligned": (str(entry), key)}
    mesh = mesh_from_config(cfg.get("mesh"))  # one mesh for both arms' trainings
    for arm in ARMS:
        sel, arm_pool, _ = arms[arm]
        rows = [arm_pool[i] for i in sel.indices]
        block = finetune_block(cfg, 1.0 if arm == "harmful" else 0.0,
                               float(cfg.finetune.optimizer.ema_beta))
        block.n = len(rows)
        clock.say(f"stage 2: {labels[arm]} on {len(rows)} rows")
        k2, e2, s2 = train_stage(label=labels[arm], source=str(entry), source_key=key,
                                 rows=rows, stage_cfg=block, model_cfg=cfg.model,
                                 cache_root=cache, resume=resume, progress=progress,
                                 mesh=mesh)
        link(run.checkpoint(f"ft_{method}_{arm}"), e2)
        run.log({"event": "stage", "stage": f"ft_{method}_{arm}", "key": k2, **s2})
        models[arm] = (str(e2), k2)
    results, records = {}, {}
    for name, (source, model_key) in models.items():
        clock.say(f"stage 3: evaluating {labels[name]}")
        results[labels[name]], records[labels[name]] = evaluate_stage(
            label=labels[name], source=source, model_key=model_key, sets=data["eval_sets"],
            eval_cfg=cfg.eval, cache_root=cache, generate_fn=generate_fn)
        run.log({"event": "eval", "label": labels[name],
                 **{m: results[labels[name]][m]["value"] for m in report.HEADLINE}})
    write_outputs(cfg, run, results, records, labels, selected, arms, pool_scores)
    clock.say(f"done: {run.path / 'report.md'}")
    return run.path


def build_data(cfg: ml_collections.ConfigDict, cache: Path, generate_fn: Callable | None
               ) -> tuple[dict[str, Any], list[Row], list[Row]]:
    """The main study's data (same alignment rows), the answered benign pool and the
    harmful rows; counts in data["counts"]."""
    model, tokenizer, model_id, data = base_and_data(cfg, cache, generate_fn)
    generated = str(cache / "generated")
    generate = study_data.with_progress(generate_fn or model_generate_fn(model, tokenizer))
    pool = outlier_data.benign_pool(cfg, data, model_id, generate, cache_dir=generated,
                                    counts=data["counts"])
    harmful = outlier_data.harmful_pool(cfg, data, model_id, generate,
                                        need=int(cfg.outliers.k), cache_dir=generated,
                                        counts=data["counts"])
    return data, pool, harmful


def outlier_effects(records: dict[str, list[dict]], labels: dict[str, str]
                    ) -> list[tuple[str, str, dict]]:
    """Each arm vs the random-benign arm; random vs the aligned model; Self-Inf-N vs
    harmful data (paired over the same prompts; second minus first)."""
    diff = lambda a, b, m: report.paired_difference(report.outcomes(records[labels[a]], m),
                                                    report.outcomes(records[labels[b]], m))
    effects = [(f"{arm} vs random", m, diff("random", arm, m))
               for arm in ("self_inf_n", "self_inf_raw", "harmful") for m in COMPARED]
    effects += [("random vs aligned (before fine-tuning)", m, diff("aligned", "random", m))
                for m in COMPARED]
    effects.append(("self_inf_n vs harmful", "harmful_score",
                    diff("harmful", "self_inf_n", "harmful_score")))
    return effects


def verdicts(cfg: ml_collections.ConfigDict, effects: list[tuple[str, str, dict]]) -> list[str]:
    """The harmful-score answers in plain words: each arm vs random, Self-Inf-N vs harmful."""
    k = cfg.outliers.k
    phrase = {"self_inf_n": f"the Self-Inf-N top {k}", "self_inf_raw":
              f"the raw Self-Inf top {k}", "harmful": f"{k} harmful samples",
              "random": f"{k} random benign samples"}
    hs = {name: d for name, m, d in effects if m == "harmful_score"}
    out = [outlier_report.verdict(phrase[a], phrase["random"], hs[f"{a} vs random"])
           for a in ("self_inf_n", "self_inf_raw", "harmful")]
    return out + [outlier_report.verdict(phrase["self_inf_n"], phrase["harmful"],
                                         hs["self_inf_n vs harmful"])]


def write_outputs(cfg: ml_collections.ConfigDict, run: RunFolder, results: dict,
                  records: dict, labels: dict[str, str], selected: dict[str, Any],
                  arms: dict[str, Arm], pool_scores: Scores) -> None:
    """results.json, records.jsonl, plots/, report.md."""
    write_results(run.path, results, [r | {"model": label} for label, recs in records.items()
                                      for r in recs], overwrite=True)
    plot_metrics(results, run.path / "plots" / "metrics.png")
    lengths = {"pool": pool_scores.answer_tokens} | {
        n: arms[n][2].answer_tokens[arms[n][0].indices] for n in ARMS}
    outlier_report.plot_selection(
        pool_scores, {n: arms[n][0].indices for n in ("self_inf_n", "self_inf_raw")},
        lengths, run.path / "plots" / "selection.png")
    effects = outlier_effects(records, labels)
    run.write_text("report.md", "\n".join(report_lines(cfg, results, labels, selected,
                                                       effects, len(pool_scores.self_inf))))


def report_lines(cfg: ml_collections.ConfigDict, results: dict, labels: dict[str, str],
                 selected: dict[str, Any], effects: list[tuple[str, str, dict]],
                 pool_n: int) -> list[str]:
    o, split = cfg.outliers, study_data.eval_split(cfg)
    sets = {n: s for n, s in selected.items() if n != "format_counts"}
    counts = "; ".join(f"{n}: {s['k']} rows ({s['considered']} candidates, "
                       f"{s['dropped_trivial']} trivial dropped, short by {s['short_by']})"
                       for n, s in sets.items() if n != "pool")
    fmt = selected["format_counts"]
    return [
        f"# {cfg.run.title}", "",
        f"Aligned model: {cfg.align.method} (stage 1, shared with the main study's cache). "
        f"Benign pool: {pool_n} train-split prompts of {o.pool_sources or cfg.data.benign_sources}"
        f" unused by stage 1, answered by the base model. Self-Inf over the {o.param_mode} "
        f"parameters of the aligned model. k = {o.k}; Self-Inf-N candidates: top "
        f"{o.top_pool}, trivial answers dropped; raw Self-Inf top k "
        f"{'with' if o.filter_raw else 'without'} that filter.", "",
        "## Verdict (harmful score, paired bootstrap over the same prompts)", "",
        *[f"- {v}" for v in verdicts(cfg, effects)], "",
        "## Results (percent, 95% Wilson interval over prompts; one seed)", "",
        report.compact_table(results), "",
        "## Paired differences (second model minus first, percentage points)", "",
        *[report.effect_sentence(n, m, d) for n, m, d in effects], "",
        "## Selected sets: answer length (response tokens incl. end-of-turn)", "",
        outlier_report.length_table({n: s["answer_tokens"] for n, s in sets.items()}), "",
        f"Selection: {counts}. Lengths are counted as stage 2 trains the rows (cut at "
        f"finetune.max_length = {cfg.finetune.max_length}: {fmt['truncated']} answers cut, "
        f"{fmt['skipped']} rows dropped {fmt['reasons']}). The sets with their scores: "
        "`selected/*.jsonl`; the whole pool: `pool_scores.jsonl`.", "",
        "![answer lengths and scores](plots/selection.png)", "",
        "## Notes", "",
        "- " + report.refusal_detection(results[labels["aligned"]]["refusal_list_version"],
                                           results[labels["aligned"]].get("judge"))
        + f", greedy decoding, first {cfg.eval.max_new_tokens} new tokens.",
        f"- Harmful prompts: {split} split of {cfg.data.harmful_sources}; over-refusal: "
        f"{split} split of {cfg.eval.benign_sources}; task: {split} split of "
        f"{cfg.data.task}. Nothing in the val or test splits is trained on or selected from.",
        f"- Fine-tuning: the main study's finetune block ({cfg.model.finetune_mode}, lr "
        f"{cfg.finetune.optimizer.lr:g}, {cfg.finetune.epochs:g} epochs, batch "
        f"{cfg.finetune.batch_size}) on each set.", "",
        "## All metrics (incl. per-source breakdowns)", "", format_table(results), "",
        "## Config", "", "```", cfg.to_json_best_effort(indent=2), "```", ""]


if __name__ == "__main__":
    run_config_script(run_study, "configs/benign_outliers.py")
