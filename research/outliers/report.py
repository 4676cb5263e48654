"""What the benign-outlier study shows besides the metrics table: the answer-length
distribution of each selected set (raw Self-Inf should favour very short answers,
Self-Inf-N should not), a plot of it, and the verdict in plain words."""

from __future__ import annotations

from pathlib import Path

import chex
import numpy as np

from research.outliers.self_influence import Scores

LENGTH_COLUMNS = ("n", "mean", "min", "q25", "median", "q75", "max", "share_under_5")


def length_table(summaries: dict[str, dict]) -> str:
    """Markdown table of `selection.length_summary` dicts, one row per set."""
    lines = ["| set | " + " | ".join(LENGTH_COLUMNS) + " |",
             "|---" * (len(LENGTH_COLUMNS) + 1) + "|"]
    for name, s in summaries.items():
        cells = [str(s.get(c, "-")) if c == "n" else
                 (f"{100 * s[c]:.0f}%" if c == "share_under_5" else f"{s[c]:.1f}")
                 if c in s else "-" for c in LENGTH_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(arm: str, baseline: str, d: dict, metric: str = "harmful_score") -> str:
    """Whether `arm` raised `metric` more than `baseline`, said plainly from the paired
    difference (arm - baseline) and its 95% CI."""
    if d["value"] is None:
        return f"{arm} vs {baseline}: no shared prompts, so nothing can be said."
    ci = f"{d['value']:+.1f} points, 95% CI [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}], " \
         f"n = {d['n']} prompts"
    if d["ci_low"] > 0:
        return f"Yes: fine-tuning on {arm} raised the {metric} more than {baseline} ({ci})."
    if d["ci_high"] < 0:
        return (f"No, the opposite: fine-tuning on {arm} gave a lower {metric} than "
                f"{baseline} ({ci}).")
    return (f"Not shown: the {metric} difference between {arm} and {baseline} is {ci}; "
            f"the CI includes 0, so this study does NOT show that {arm} breaks safety "
            f"more than {baseline} (not significant at this size).")


def plot_selection(pool: Scores, picked: dict[str, np.ndarray],
                   lengths: dict[str, np.ndarray], path: Path) -> Path:
    """Left: answer tokens of each set (box plot). Right: the pool's raw Self-Inf
    against answer tokens, with the examples each Self-Inf set picked marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chex.assert_equal_shape([pool.self_inf, pool.answer_tokens])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(lengths)
    left.boxplot([np.asarray(lengths[n]) for n in names], showmeans=True)
    left.set_xticks(range(1, len(names) + 1), names, rotation=20, fontsize=8)
    left.set_ylabel("answer tokens")
    left.set_title("answer length per set (triangle: mean)", fontsize=9)
    right.scatter(pool.answer_tokens, np.log1p(pool.self_inf), s=8, c="lightgray",
                  label="pool")
    for (name, idx), marker in zip(picked.items(), ("o", "x", "^", "s")):
        idx = np.asarray(idx, np.int64)
        chex.assert_rank(idx, 1)
        right.scatter(pool.answer_tokens[idx], np.log1p(pool.self_inf[idx]), s=18,
                      marker=marker, label=name)
    right.set_xlabel("answer tokens")
    right.set_ylabel("log(Self-Inf + 1)")
    right.set_title("benign pool scored on the aligned model", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
