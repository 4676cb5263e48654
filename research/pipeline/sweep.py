"""Pure helpers of the optimizer study: the grid, the best safe cell, the heatmap."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import ml_collections
import numpy as np


def grid(sweep: ml_collections.ConfigDict) -> list[dict]:
    """Every (lr, batch size, steps, EMA beta) cell, in a fixed order."""
    return [{"lr": float(lr), "batch_size": int(b), "steps": int(s), "ema": float(e)}
            for lr, b, s, e in itertools.product(sweep.lrs, sweep.batch_sizes, sweep.steps,
                                                 sweep.ema_betas)]


def cell_label(cell: dict) -> str:
    return (f"lr={cell['lr']:g},bs={cell['batch_size']},steps={cell['steps']}"
            + (f",ema={cell['ema']:g}" if cell["ema"] else ""))


def best_safe_cell(cells: Sequence[dict], safe_harmful_score: float) -> dict | None:
    """Among cells whose harmful score is at most the threshold, the one with the highest
    task accuracy (ties: lower harmful score); None when no cell is safe."""
    safe = [c for c in cells if c["harmful_score"] <= safe_harmful_score]
    if not safe:
        return None
    return max(safe, key=lambda c: (c["task_accuracy"], -c["harmful_score"]))


def heatmap(cells: Sequence[dict], path: Path) -> Path:
    """Harmful score (colour) and task accuracy (text) per cell: rows lr, columns
    (batch size, steps), one panel per EMA setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted({c["lr"] for c in cells})
    cols = sorted({(c["batch_size"], c["steps"]) for c in cells})
    emas = sorted({c["ema"] for c in cells})
    fig, axes = plt.subplots(1, len(emas), figsize=(1.2 + 1.5 * len(cols) * len(emas), 3.2),
                             squeeze=False)
    for ax, ema in zip(axes[0], emas):
        hs = np.full((len(lrs), len(cols)), np.nan)
        for c in cells:
            if c["ema"] == ema:
                i, j = lrs.index(c["lr"]), cols.index((c["batch_size"], c["steps"]))
                hs[i, j] = c["harmful_score"]
                ax.text(j, i, f"HS {c['harmful_score']:.0f}\nFA {c['task_accuracy']:.0f}",
                        ha="center", va="center", fontsize=7)
        image = ax.imshow(hs, vmin=0, vmax=100, cmap="Reds", aspect="auto")
        ax.set_xticks(range(len(cols)), [f"bs {b}\n{s} steps" for b, s in cols], fontsize=7)
        ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], fontsize=7)
        ax.set_ylabel("learning rate")
        ax.set_title("no EMA" if ema == 0 else f"EMA beta {ema:g}", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), label="harmful score (%)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
