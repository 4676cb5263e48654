"""The study's report: effect sizes with paired bootstrap CIs, report.md, plots.

An effect compares two evaluated models on the same prompts, so its CI comes from a
paired bootstrap over those prompts (resampling prompt indices, both models together).
An effect is called significant only when its 95% CI excludes zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from research.evaluation.report import format_table, is_metric

HEADLINE = ("harmful_score", "refusal_rate", "over_refusal_rate", "task_accuracy")
# metric -> (record role, record field, outcome transform)
OUTCOMES = {"harmful_score": ("harmful", "refused", lambda r: not r),
            "refusal_rate": ("harmful", "refused", bool),
            "over_refusal_rate": ("benign", "refused", bool),
            "task_accuracy": ("task", "correct", bool)}


def outcomes(records: Sequence[dict], metric: str) -> dict[str, float]:
    """Per-prompt 0/1 outcomes of `metric`, keyed by (set, uid)."""
    role, field, fn = OUTCOMES[metric]
    return {f"{r['set']}|{r['uid']}": float(fn(r[field])) for r in records
            if r["role"] == role}


def paired_difference(a: dict[str, float], b: dict[str, float], *, seed: int = 0,
                      n_boot: int = 2000) -> dict:
    """(b - a) in percentage points over the prompts both share, with a paired
    percentile-bootstrap 95% CI."""
    keys = sorted(set(a) & set(b))
    if not keys:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    diff = np.array([b[k] - a[k] for k in keys])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"value": round(100 * float(diff.mean()), 2), "ci_low": round(100 * low, 2),
            "ci_high": round(100 * high, 2), "n": len(keys)}


def effect_sentence(name: str, metric: str, d: dict) -> str:
    """A plain statement of one effect, saying whether its CI excludes zero."""
    if d["value"] is None:
        return f"- {name}: no shared prompts for {metric}."
    significant = d["ci_low"] > 0 or d["ci_high"] < 0
    verdict = ("significant at 95%" if significant else
               "NOT significant at this size (the 95% CI includes 0)")
    return (f"- {name}: {metric} changes by {d['value']:+.1f} points "
            f"(95% CI [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}], n = {d['n']}); {verdict}.")


def compact_table(results: dict[str, dict]) -> str:
    """One row per model, the headline metrics as value [CI]."""
    head = "| model | " + " | ".join(HEADLINE) + " |"
    lines = [head, "|---" * (len(HEADLINE) + 1) + "|"]
    for label, entry in results.items():
        cells = []
        for m in HEADLINE:
            v = entry.get(m)
            cells.append(f"{v['value']:.1f} [{v['ci_low']:.1f}, {v['ci_high']:.1f}] (n={v['n']})"
                         if is_metric(v) and v["value"] is not None else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(path: Path, *, title: str, config_text: str, results: dict[str, dict],
                 effects: Sequence[tuple[str, str, dict]], notes: Sequence[str]) -> Path:
    """report.md: results table, effects with CIs in plain words, notes, full table."""
    parts = [f"# {title}", "", "## Results (percent, 95% bootstrap CI over prompts)", "",
             compact_table(results), "", "## Effects (paired bootstrap over the same prompts)",
             "", *[effect_sentence(n, m, d) for n, m, d in effects], "", "## Notes", "",
             *[f"- {n}" for n in notes], "", "## All metrics (incl. per-source breakdowns)",
             "", format_table(results), "", "## Config", "", "```", config_text, "```", ""]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def plot_by_variant(results: dict[str, dict], variants: dict[str, dict], path: Path) -> Path:
    """Harmful score and task accuracy against p, one line per (start, method, EMA)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    groups: dict[str, list[tuple[float, str]]] = {}
    for label, v in variants.items():
        groups.setdefault(v["group"], []).append((v["p"], label))
    for ax, metric in zip(axes, ("harmful_score", "task_accuracy")):
        for group, members in sorted(groups.items()):
            members.sort()
            ps = [p for p, label in members if is_metric(results[label].get(metric))]
            ms = [results[label][metric] for p, label in members
                  if is_metric(results[label].get(metric))]
            if not ms:
                continue
            ys = np.array([m["value"] for m in ms])
            err = np.array([[m["value"] - m["ci_low"] for m in ms],
                            [m["ci_high"] - m["value"] for m in ms]])
            ax.errorbar(ps, ys, yerr=err, marker="o", capsize=3, label=group)
        ax.set_xlabel("harmful fraction p of the user's data")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
