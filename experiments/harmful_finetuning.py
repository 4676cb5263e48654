"""The main study: align (stage 1), user fine-tune on a harmful mix (stage 2), evaluate
(stage 3), writing runs/<experiment>/<run_name>/ (DESIGN convention 7).

    python -m experiments.harmful_finetuning --config configs/demo.py \
        [--config.finetune.optimizer.lr=1e-4] [--resume]

Stages are cached under `run.cache_dir` by a hash of their inputs, so a second run
with the same stage-1 config reuses its checkpoint; `--resume` continues an interrupted
stage and the run folder (`--config.run.name`, or else the latest one of this config)
instead of refusing.

Stage 1 runs `align.method`, or each arm of `align_arms` (label -> method and
method_config, e.g. SFT and Vaccine), and stage 2 starts from every arm, so one report
compares them (each arm vs `reference_arm` at the same p, paired CIs). With
`finetune.drift.enabled`, stage 2 records the harmful embedding drift curve from its
start on the first `drift.n` alignment refusals every `drift.every` steps; results.json
gets each fine-tune's final drift with CIs, report.md a drift table, plots/drift.png.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import ml_collections

from research.analysis.drift import drift_result, paired_drift_difference
from research.data.rows import Row
from research.pipeline import data as study_data
from research.pipeline import report
from research.pipeline.hashing import to_plain
from research.pipeline.runs import RunFolder
from research.pipeline.scripts import (align_stage, base_and_data, finetune_block,
                                       run_config_script, start_run)
from research.pipeline.stages import drift_enabled, evaluate_stage, link, train_stage
from research.evaluation.pipeline import summarize_seeds
from research.training.sharding import mesh_from_config

log = logging.getLogger("experiments.harmful_finetuning")


def variant_label(start: str, p: float, beta: float) -> str:
    return f"{start}+ft(p={p:g}{f', ema={beta:g}' if beta else ''})"


def alignment_arms(cfg: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """Stage-1 blocks by arm label. Without `align_arms`, the one method of `cfg.align`
    labelled by its name (earlier runs' labels and cache keys stay valid); with it, each
    arm is `cfg.align` with that arm's `method` and `method_config`."""
    if not cfg.get("align_arms"):
        return {str(cfg.align.method): cfg.align}
    arms = {}
    for label, arm in cfg.align_arms.items():
        block = ml_collections.ConfigDict(cfg.align.to_dict())
        block.method = str(arm.method)
        block.method_config = ml_collections.ConfigDict(arm.method_config.to_dict())
        arms[label] = block
    return arms


def drift_rows(cfg: ml_collections.ConfigDict, data: dict[str, Any]) -> list[Row]:
    """The drift's alignment examples: the first `finetune.drift.n` harmful prompts of
    stage 1 with their refusals (none when drift is off)."""
    if not drift_enabled(cfg.finetune):
        return []
    return [r for r in data["align_rows"] if r.kind == "harmful"][:int(cfg.finetune.drift.n)]


def seeded(block: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """A training block with its `seed` offset by the study seed (seed 0: unchanged, so
    single-seed runs keep their cache keys)."""
    if seed == 0:
        return block
    out = ml_collections.ConfigDict(block.to_dict())
    out.seed = int(block.seed) + seed
    return out


def stage_name(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}_s{seed}"


def run_study(cfg: ml_collections.ConfigDict, *, resume: bool = False, progress: bool = True,
              generate_fn: Callable | None = None) -> Path:
    """Run all stages for every seed in `cfg.seeds` and write the run folder; returns its
    path. Each seed retrains every arm (its training seed offset by the study seed) and
    is evaluated on the same prompts, so the report's intervals cover seeds and prompts
    and its effects pair by (seed, prompt)."""
    clock, run, cache = start_run(cfg, resume)
    seeds = [int(s) for s in cfg.get("seeds", (0,))]
    base_source = str(cfg.model.source)
    base_model, tokenizer, base_key, data = base_and_data(cfg, cache, generate_fn)
    run.write_json("data_counts.json", data["counts"])
    run.log({"event": "data", "align_rows": len(data["align_rows"]),
             "user_harmful_pool": len(data["user_harmful"]),
             "task_train": len(data["task_train"]), "counts": data["counts"]})
    sets = data["eval_sets"]
    first_entry: dict[str, dict] = {}  # each label's first evaluation: its settings, timing
    records: dict[str, dict[int, list[dict]]] = {}

    def evaluate(label: str, seed: int, source: str, key: str, loaded: Any = None) -> None:
        clock.say(f"evaluating {label} (seed {seed}) on {sum(len(s.rows) for s in sets)} "
                  "prompts")
        entry, recs = evaluate_stage(label=label, source=source, model_key=key, sets=sets,
                                     eval_cfg=cfg.eval, cache_root=cache, loaded=loaded,
                                     generate_fn=generate_fn)
        first_entry.setdefault(label, entry)
        records.setdefault(label, {})[seed] = recs
        run.log({"event": "eval", "label": label, "seed": seed,
                 **{m: entry[m]["value"] for m in report.HEADLINE if m in entry}})
        clock.say(f"{label}: " + ", ".join(f"{m} {entry[m]['value']:.1f}"
                                           for m in report.HEADLINE if m in entry))

    evaluate("base", seeds[0], base_source, base_key, loaded=(base_model, tokenizer))
    for seed in seeds[1:]:  # the untrained base model is the same for every seed
        records["base"][seed] = records["base"][seeds[0]]
    del base_model
    arms = alignment_arms(cfg)
    starts = [s for start in cfg.finetune.starts
              for s in (["base"] if start == "base" else list(arms))]
    drift_examples = drift_rows(cfg, data)
    mesh = mesh_from_config(cfg.get("mesh"))  # one mesh for every stage-2 training
    variants: dict[str, dict] = {}
    curves: dict[str, list[dict]] = {}
    drifts: dict[str, dict] = {}
    for seed in seeds:
        sources: dict[str, tuple[str, str]] = {"base": (base_source, base_key)}
        for arm, block in arms.items():
            clock.say(f"stage 1 (seed {seed}): align {arm} ({block.method}) on "
                      f"{len(data['align_rows'])} rows")
            key, entry, _ = align_stage(cfg, run, base_source=base_source, base_key=base_key,
                                        rows=data["align_rows"], cache=cache, resume=resume,
                                        progress=progress, arm=stage_name(arm, seed),
                                        block=seeded(block, seed))
            sources[arm] = (str(entry), key)
            evaluate(arm, seed, str(entry), key)
        for start_label in starts:
            source, source_key = sources[start_label]
            for p in cfg.finetune.p_values:
                rows = study_data.user_rows(cfg, data, p)
                # EMA arms first: a track-mode EMA stage also writes its no-EMA twin
                for beta in sorted(cfg.finetune.ema_betas, key=lambda b: b == 0):
                    label = variant_label(start_label, p, beta)
                    clock.say(f"stage 2 (seed {seed}): {label} on {len(rows)} rows")
                    k, e, s = train_stage(label=label, source=source, source_key=source_key,
                                          rows=rows,
                                          stage_cfg=seeded(finetune_block(cfg, p, beta), seed),
                                          model_cfg=cfg.model, cache_root=cache,
                                          resume=resume, progress=progress,
                                          drift_rows=drift_examples, mesh=mesh)
                    stage = stage_name(f"ft_{start_label}_p{p:g}_ema{beta:g}", seed)
                    link(run.checkpoint(stage), e)
                    drift = s.pop("drift", None)
                    run.log({"event": "stage", "stage": stage, "key": k, **s})
                    evaluate(label, seed, str(e), k)
                    if drift is not None and label not in drifts:  # the first seed's
                        drifts[label] = dict(drift_result(drift, seed=int(cfg.eval.seed)),
                                             curve=f"checkpoints/{stage}/drift.jsonl")
                        curves[label] = read_jsonl(e / "drift.jsonl")
                    variants[label] = {"group": f"{start_label}, " + (
                        f"EMA {beta:g}" if beta else "no EMA"), "p": float(p),
                        "start": start_label, "ema": float(beta), "steps": int(s["steps"])}
    order = ["base", *arms] + [variant_label(start, p, beta) for start in starts
                               for p in cfg.finetune.p_values for beta in cfg.finetune.ema_betas]
    shared = ("refusal_list_version", "judge", "settings", "model", "timing")
    results = {label: summarize_seeds(records[label], seed=int(cfg.eval.seed))
               | {k: v for k, v in first_entry[label].items() if k in shared}
               for label in order}
    for label, drift in drifts.items():
        results[label]["harmful_drift"] = drift
    variants = {k: variants[k] for k in order if k in variants}
    write_outputs(cfg, run, results, {k: records[k] for k in order}, variants, list(arms),
                  curves)
    clock.say(f"done: {run.path / 'report.md'}")
    return run.path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def study_effects(records: dict[str, dict[int, list[dict]]], variants: dict[str, dict],
                  arms: Sequence[str], reference: str | None = None
                  ) -> list[tuple[str, str, dict]]:
    """Each alignment vs base, each fine-tune vs its start, EMA vs no EMA at the same
    cell, and each arm's fine-tune vs the `reference` arm's at the same cell; records
    by label and seed, effects paired by (seed, prompt)."""
    diff = lambda a, b, m: report.arm_difference(records[a], records[b], m)
    effects = [(f"{arm} alignment vs base", m, diff("base", arm, m)) for arm in arms
               for m in ("refusal_rate", "over_refusal_rate", "task_accuracy")]
    for label, v in variants.items():
        if v["ema"] == 0:
            effects += [(f"{label} vs {v['start']}", m, diff(v["start"], label, m))
                        for m in ("refusal_rate", "task_accuracy")]
    for label, v in variants.items():
        if v["ema"] > 0:
            plain = variant_label(v["start"], v["p"], 0.0)
            if plain in records:
                effects += [(f"EMA {v['ema']:g} vs no EMA ({v['start']}, p={v['p']:g})", m,
                             diff(plain, label, m)) for m in ("harmful_score", "task_accuracy")]
    for label, v in variants.items():
        base = variant_label(reference, v["p"], v["ema"]) if reference else None
        if v["start"] in arms and v["start"] != reference and base in records:
            effects += [(f"{label} vs {base}", m, diff(base, label, m))
                        for m in ("harmful_score", "task_accuracy")]
    return effects


def ema_anchor_notes(variants: dict[str, dict], mode: str) -> list[str]:
    """How much of the starting weights each track-mode EMA average still holds
    (beta^steps): an EMA effect after few steps mostly shows how little the average has
    moved. (In pull mode the averaged fast weights are themselves pulled toward the
    average, so beta^steps does not measure how far it is held at the start, and no
    note is given.)"""
    if mode != "track":
        return []
    arms: dict[tuple[float, int], list[str]] = {}
    for label, v in variants.items():
        if v["ema"] > 0:
            arms.setdefault((v["ema"], v["steps"]), []).append(label)
    return [f"EMA {beta:g} (track mode) over {steps} steps, started at the starting "
            f"weights ({', '.join(labels)}): the average still holds "
            f"{100 * beta ** steps:.0f}% of them ({beta:g}^{steps}), so an EMA effect here "
            "is mostly how little it has moved."
            for (beta, steps), labels in sorted(arms.items())]


def write_outputs(cfg: ml_collections.ConfigDict, run: RunFolder, results: dict,
                  records: dict, variants: dict, arms: Sequence[str],
                  curves: dict[str, list[dict]] | None = None) -> None:
    """results.json, records/, plots/, report.md."""
    from research.evaluation.report import plot_metrics

    run.write_json("results.json", results)
    for label, by_seed in records.items():
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
        run.write_json(f"records/{safe}.json", [dict(r, seed=seed) for seed, recs in
                                                by_seed.items() for r in recs])
    plot_metrics(results, run.path / "plots" / "metrics.png")
    if variants:
        report.plot_by_variant(results, variants, run.path / "plots" / "by_method_and_p.png",
                               starts=["base", *arms])
    if curves:
        report.plot_drift(curves, results, variants, run.path / "plots" / "drift.png")
    split = study_data.eval_split(cfg)
    notes = [report.refusal_detection(results["base"]["refusal_list_version"],
                                       results["base"].get("judge"))
             + f", greedy decoding, first {cfg.eval.max_new_tokens} new tokens (task answers: "
             f"{cfg.eval.task_max_new_tokens}).",
             f"Harmful prompts: {split} split of " + cfg.data.harmful_sources
             + f"; benign (over-refusal) prompts: {split} split of " + cfg.eval.benign_sources
             + f" (per-source rates in the full table); task: {split} split of "
             + cfg.data.task + (f"; edge-case over-refusal: {split} split of "
                                + cfg.eval.edgy_sources + ", not pooled"
                                if cfg.eval.get("edgy_sources") else "")
             + ". Splits group near-duplicates; nothing in val or test is trained on.",
             (f"Seeds per arm: {len(cfg.get('seeds', (0,)))} "
              f"({', '.join(str(s) for s in cfg.get('seeds', (0,)))}); values are means over "
              "seeds with hierarchical (seed, then prompt) bootstrap intervals and effects "
              "paired by seed and prompt." if len(cfg.get("seeds", (0,))) > 1 else
              "One training seed per arm: intervals cover prompt sampling only, not "
              "seed-to-seed variance (studies use `seeds=(0, 1, 2)`)."),
             f"Finetuning mode: {cfg.model.finetune_mode}"
             + (f" (rank {cfg.model.lora_rank}, alpha {cfg.model.lora_alpha})"
                if cfg.model.finetune_mode == "lora" else "") + ".",
             "Alignment arms: " + "; ".join(
                 f"{arm} = {block.method} {to_plain(block.method_config)}"
                 for arm, block in alignment_arms(cfg).items()) + "."]
    notes += ema_anchor_notes(variants, str(cfg.finetune.optimizer.ema_mode))
    reference = cfg.get("reference_arm") or (arms[0] if len(arms) > 1 else None)
    report.write_report(run.path / "report.md", title=cfg.run.title,
                        config_text=cfg.to_json_best_effort(indent=2), results=results,
                        effects=study_effects(records, variants, arms, reference),
                        notes=notes, more_effects=drift_effects(results, variants, arms,
                                                                reference))


def drift_effects(results: dict, variants: dict[str, dict], arms: Sequence[str],
                  reference: str | None) -> list[str]:
    """Each arm's fine-tune vs the `reference` arm's at the same cell: the paired
    difference of relative drift on the same examples (first seed's curves)."""
    lines = []
    for label, v in variants.items():
        base = variant_label(reference, v["p"], v["ema"]) if reference else None
        if v["start"] not in arms or v["start"] == reference or base not in results:
            continue
        a, b = (results[x].get("harmful_drift", {}).get("per_example") for x in (base, label))
        if a and b and "ref_sum_sq" in a and "ref_sum_sq" in b:
            lines.append(report.drift_effect_sentence(f"{label} vs {base}",
                                                      paired_drift_difference(a, b)))
    return lines


if __name__ == "__main__":
    run_config_script(run_study, "configs/demo.py")
