"""Write and show evaluation results: results.json, records.jsonl, a table, a plot.

A run folder is never overwritten silently (DESIGN convention 7): writing where a
results.json already exists needs `overwrite=True`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence


def is_metric(value: object) -> bool:
    return isinstance(value, dict) and {"value", "ci_low", "ci_high", "n"} <= set(value)


def metric_items(entry: dict) -> Iterator[tuple[str, dict]]:
    """The metrics of one model's entry (skipping settings, timing, counts)."""
    for name, value in entry.items():
        if is_metric(value):
            yield name, value


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def format_table(results: dict[str, dict]) -> str:
    """A markdown table: one row per (model, metric), value in percent with its 95% CI."""
    lines = ["| model | metric | value (%) | 95% CI | n |", "|---|---|---|---|---|"]
    for label, entry in results.items():
        for name, m in metric_items(entry):
            lines.append(f"| {label} | {name} | {_fmt(m['value'])} | "
                         f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}] | {m['n']} |")
    return "\n".join(lines)


def write_results(out_dir: str | Path, results: dict[str, dict], records: Sequence[dict], *,
                  overwrite: bool = False) -> Path:
    """Write `results.json` and `records.jsonl` into `out_dir`; returns the folder."""
    out = Path(out_dir)
    target = out / "results.json"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "records.jsonl", "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    target.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return out


def plot_metrics(results: dict[str, dict], path: str | Path,
                 names: Sequence[str] = ("harmful_score", "refusal_rate",
                                         "over_refusal_rate", "task_accuracy")) -> Path:
    """Grouped bars per metric and model with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [n for n in names if any(is_metric(e.get(n)) and e[n]["n"] for e in
                                      results.values())]
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * max(1, len(shown)), 3.2))
    width = 0.8 / max(1, len(results))
    for k, (label, entry) in enumerate(results.items()):
        xs, ys, lo, hi = [], [], [], []
        for i, name in enumerate(shown):
            m = entry.get(name)
            if is_metric(m) and m["value"] is not None:
                xs.append(i + k * width)
                ys.append(m["value"])
                lo.append(m["value"] - m["ci_low"])
                hi.append(m["ci_high"] - m["value"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shown))], shown, fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
