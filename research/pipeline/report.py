"""The study's report: effect sizes with paired CIs, drift, report.md, plots.

An effect compares two evaluated models on the same prompts, so its CI comes from a
paired bootstrap over those prompts (both models together; never zero width).
An effect is called significant only when its 95% CI excludes zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from research.evaluation.intervals import paired_effect
from research.evaluation.refusal import refusal_list
from research.evaluation.report import format_table, is_metric

HEADLINE = ("harmful_score", "refusal_rate", "over_refusal_rate", "task_accuracy")
# the compact table's columns: the headline, helpfulness, and edge-case over-refusal
TABLE = HEADLINE[:3] + ("helpfulness", "over_refusal_rate/rho_overrefusal") + HEADLINE[3:]
# metric -> (record role, record field, outcome transform)
OUTCOMES = {"harmful_score": ("harmful", "harmful", bool),
            "refusal_rate": ("harmful", "refused", bool),
            "over_refusal_rate": ("benign", "refused", bool),
            "task_accuracy": ("task", "correct", bool)}


def outcomes(records: Sequence[dict], metric: str) -> dict[str, float]:
    """Per-prompt 0/1 outcomes of `metric` over the pooled sets, keyed by (set, uid)."""
    role, field, fn = OUTCOMES[metric]
    return {f"{r['set']}|{r['uid']}": float(fn(r[field])) for r in records
            if r["role"] == role and r.get("pooled", True)}


def _paired(a: Mapping[tuple, float], b: Mapping[tuple, float], **kwargs) -> dict:
    """intervals.paired_effect over (seed, prompt) keys, or an empty metric when the arms
    share no key."""
    if not set(a) & set(b):
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    return paired_effect(a, b, **kwargs)


def paired_difference(a: dict[str, float], b: dict[str, float], *, seed: int = 0,
                      n_boot: int = 2000) -> dict:
    """(b - a) in percentage points over the prompts both share, with a paired 95% CI
    (one seed: a paired bootstrap over prompts; research.evaluation.intervals)."""
    return _paired({(0, k): v for k, v in a.items()}, {(0, k): v for k, v in b.items()},
                   seed=seed, n_boot=n_boot)


def seeded_outcomes(records_by_seed: Mapping[int, Sequence[dict]],
                    metric: str) -> dict[tuple[int, str], float]:
    """Per-prompt 0/1 outcomes of `metric` keyed by (seed, set|uid)."""
    return {(seed, key): v for seed, recs in records_by_seed.items()
            for key, v in outcomes(recs, metric).items()}


def arm_difference(a: Mapping[int, Sequence[dict]], b: Mapping[int, Sequence[dict]],
                   metric: str, *, seed: int = 0) -> dict:
    """(b - a) in points for `metric`, paired by (seed, prompt): a hierarchical bootstrap
    over seeds then prompts, or over prompts for one seed (intervals.paired_effect)."""
    return _paired(seeded_outcomes(a, metric), seeded_outcomes(b, metric), seed=seed)


def effect_sentence(name: str, metric: str, d: dict) -> str:
    """A plain statement of one effect, saying whether its CI excludes zero."""
    if d["value"] is None:
        return f"- {name}: no shared prompts for {metric}."
    significant = d["ci_low"] > 0 or d["ci_high"] < 0
    verdict = ("significant at 95%" if significant else
               "NOT significant at this size (the 95% CI includes 0)")
    seeds = f", {d['n_seeds']} seeds" if d.get("n_seeds", 1) > 1 else ""
    return (f"- {name}: {metric} changes by {d['value']:+.1f} points "
            f"(95% CI [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}], n = {d['n']}{seeds}); "
            f"{verdict}.")


def drift_effect_sentence(name: str, d: dict) -> str:
    """A plain statement of a paired relative-drift difference (analysis.drift)."""
    significant = d["ci_low"] > 0 or d["ci_high"] < 0
    verdict = ("significant at 95%" if significant else
               "NOT significant at this size (the 95% CI includes 0)")
    return (f"- {name}: relative harmful embedding drift changes by {d['value']:+.4f} "
            f"(95% CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], n = {d['n']} examples, "
            f"paired); {verdict}.")


def refusal_detection(version: str, judge: dict | None = None) -> str:
    """How verdicts were reached, for a report's notes: the judge, its measured
    agreement with the calibration set, and the keyword list version recorded beside."""
    listed = refusal_list()
    keyword = (f"keyword list version {version} ({len(listed['phrases'])} phrases and "
               f"{len(listed['patterns'])} patterns)")
    if not judge:
        return f"Refusal detection: {keyword}"
    from research.evaluation.calibration import agreement_note

    return (f"Verdicts: judge `{judge['name']}` ({judge['version']}); "
            f"{agreement_note(judge['name'])}. Keyword rates use the {keyword}")


def compact_table(results: dict[str, dict]) -> str:
    """One row per model, the table's metrics that any model has, as value [CI] (n)."""
    shown = [m for m in TABLE if any(is_metric(e.get(m)) for e in results.values())]
    head = "| model | " + " | ".join(shown) + " |"
    lines = [head, "|---" * (len(shown) + 1) + "|"]
    for label, entry in results.items():
        cells = []
        for m in shown:
            v = entry.get(m)
            cells.append(f"{v['value']:.1f} [{v['ci_low']:.1f}, {v['ci_high']:.1f}] (n={v['n']})"
                         if is_metric(v) and v["value"] is not None else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ci(m: dict, fmt: str) -> str:
    return f"{m['value']:{fmt}} [{m['ci_low']:{fmt}}, {m['ci_high']:{fmt}}]"


def drift_table(results: dict[str, dict]) -> list[str]:
    """The drift section's lines (none if no model has `harmful_drift`)."""
    rows = [(label, e["harmful_drift"]) for label, e in results.items() if "harmful_drift" in e]
    if not rows:
        return []
    d0 = rows[0][1]
    counts = d0.get("format_counts") or {}
    skipped = (f" ({counts['skipped']} of {counts['read']} rows skipped: "
               f"{counts['reasons']})" if counts.get("skipped") else "")
    lines = ["## Harmful embedding drift (each fine-tune vs its start)", "",
             f"Distance between the fine-tuned and the starting model's `{d0['site']}` "
             f"activations on {d0['examples']} alignment examples{skipped} (harmful "
             "prompts with refusals), over real tokens: `l2_total` is the L2 norm of the "
             "stacked difference (the paper's measure), `sum_sq_total` the sum of squared "
             "norms, i.e. l2_total squared (the reference code's measure), `relative` "
             "= `||dh|| / ||h_ref||`, l2_total over the L2 norm of the starting model's "
             "activations at the same site and tokens (comparable across starts); 95% CI: "
             "percentile bootstrap over the examples. Alignment loss: mean response "
             "cross-entropy on the same examples.",
             "", "| model | l2_total [95% CI] | relative [95% CI] | sum_sq_total [95% CI] | "
             "l2 per layer | alignment loss |", "|---|---|---|---|---|---|"]
    for label, d in rows:
        layers = ", ".join(f"{x:.3g}" for x in d["l2_per_layer"])
        relative = _ci(d["relative_total"], ".4g") if "relative_total" in d else "-"
        lines.append(f"| {label} | {_ci(d['l2_total'], '.4g')} | {relative} | "
                     f"{_ci(d['sum_sq_total'], '.4g')} | {layers} | "
                     f"{d['alignment_loss']:.4f} |")
    return lines + [""]


def write_report(path: Path, *, title: str, config_text: str, results: dict[str, dict],
                 effects: Sequence[tuple[str, str, dict]], notes: Sequence[str],
                 more_effects: Sequence[str] = ()) -> Path:
    """report.md: results table, drift (if measured), effects with CIs in plain words
    (then `more_effects`, already written lines), notes, full table."""
    parts = [f"# {title}", "",
             "## Results (percent, 95% Wilson interval over prompts; one seed)", "",
             compact_table(results), "", *drift_table(results),
             "## Effects (paired bootstrap over the same prompts)",
             "", *[effect_sentence(n, m, d) for n, m, d in effects], *more_effects, "",
             "## Notes", "",
             *[f"- {n}" for n in notes], "", "## All metrics (incl. per-source breakdowns)",
             "", format_table(results), "", "## Config", "", "```", config_text, "```", ""]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def plot_by_variant(results: dict[str, dict], variants: dict[str, dict], path: Path,
                    starts: Sequence[str] = ()) -> Path:
    """Harmful score and task accuracy against p, one series per (start, method, EMA),
    each nudged sideways so series at the same p do not hide each other; each model in
    `starts` (before any fine-tuning) is a dashed horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    groups: dict[str, list[tuple[float, str]]] = {}
    for label, v in variants.items():
        groups.setdefault(v["group"], []).append((v["p"], label))
    ps_all = sorted({v["p"] for v in variants.values()})
    shifts, gap = series_shifts(len(groups), ps_all)
    for ax, metric in zip(axes, ("harmful_score", "task_accuracy")):
        for i, (group, members) in enumerate(sorted(groups.items())):
            members.sort()
            kept = [(p, results[label][metric]) for p, label in members
                    if is_metric(results[label].get(metric))]
            if not kept:
                continue
            _errorbars(ax, [p + shifts[i] for p, _ in kept], [m for _, m in kept], group)
        for j, start in enumerate(starts):
            if is_metric(results.get(start, {}).get(metric)):
                ax.axhline(results[start][metric]["value"], linestyle="--", linewidth=1,
                           color=f"C{(len(groups) + j) % 10}",
                           label=f"{start} (before fine-tuning)")
        ax.set_xticks(ps_all)
        ax.set_xlim(ps_all[0] - 0.6 * gap, ps_all[-1] + 0.6 * gap)
        ax.set_xlabel("harmful fraction p of the user's data")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def series_shifts(n_series: int, ps: Sequence[float]) -> tuple[list[float], float]:
    """Sideways shifts of `n_series` series plotted at the sorted values `ps`, centred
    and within half the smallest gap between them (a lone p counts a gap of max(p, 0.1)),
    and that gap."""
    gap = min((b - a for a, b in zip(ps, ps[1:])), default=max(ps[0], 0.1))
    step = 0.5 * gap / max(n_series, 1)
    return [(i - (n_series - 1) / 2) * step for i in range(n_series)], gap


def _errorbars(ax, xs: Sequence[float], metrics: Sequence[dict], label: str) -> None:
    """Metric values against `xs` with their 95% CIs as error bars."""
    err = np.array([[m["value"] - m["ci_low"] for m in metrics],
                    [m["ci_high"] - m["value"] for m in metrics]])
    ax.errorbar(xs, [m["value"] for m in metrics], yerr=err, marker="o", capsize=3,
                label=label)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_drift(curves: dict[str, list[dict]], results: dict[str, dict],
               variants: dict[str, dict], path: Path) -> Path:
    """Drift (l2_total) and alignment loss against stage-2 steps, one line per
    fine-tune, and the final drift against p per group with its 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for label, points in curves.items():
        steps = [q["step"] for q in points]
        axes[0].plot(steps, [q["l2_total"] for q in points], marker=".", label=label)
        axes[1].plot(steps, [q["alignment_loss"] for q in points], marker=".", label=label)
    groups: dict[str, list[tuple[float, dict]]] = {}
    for label, v in variants.items():
        if "harmful_drift" in results.get(label, {}):
            groups.setdefault(v["group"], []).append((v["p"], results[label]["harmful_drift"]))
    for group, members in sorted(groups.items()):
        members.sort(key=lambda m: m[0])
        _errorbars(axes[2], [p for p, _ in members], [d["l2_total"] for _, d in members],
                   group)
    for ax, (x, y) in zip(axes, (("stage-2 step", "drift l2_total"),
                                 ("stage-2 step", "alignment loss"),
                                 ("harmful fraction p of the user's data",
                                  "final drift l2_total"))):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.legend(fontsize=6)
    return _save(fig, path)
