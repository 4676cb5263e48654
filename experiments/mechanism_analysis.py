"""Mechanism analysis of checkpoints: first-token masses, logit lens, probes, direction.

    python -m experiments.mechanism_analysis --run runs/demo/first \
        [--model LABEL=SOURCE ...] [--prefix TEXT | --prefix-file prefix.txt] --out DIR

For each model: the refusal/compliance probability mass of the first answer token on
harmful and benign prompts, with and without the prefix; the logit lens (refusal mass
by layer at the first answer position); per-layer linear probes harmful vs benign
(last-token and mean-pooled, held-out accuracy) and the probe-score shift the prefix
causes; the difference-of-means refusal direction and its cosine with the first
model's direction. Prompts come from the test split. Writes results.json,
plots/*.png and report.md into DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.analysis import logits as L
from research.analysis import probes as P
from research.pipeline.inputs import model_sources, sample_rows


def lens_refusal_by_layer(model: Any, tokenizer: Any, prompts: Sequence[str],
                          prefix: str | None) -> dict[str, list[float]]:
    """Mean refusal/compliance mass by layer through the logit lens."""
    refusal_ids, compliance_ids = L.opener_token_ids(tokenizer)
    tokens, mask = L.encode_prompts(tokenizer, prompts, prefix=prefix)
    graphdef, state = nnx.split(model)
    lens = L.logit_lens(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask))
    masses = L.lens_set_masses(lens, jnp.asarray(refusal_ids), jnp.asarray(compliance_ids))
    return {k: np.asarray(v).mean(axis=1).tolist() for k, v in masses.items()}


def analyze_model(model: Any, tokenizer: Any, harmful: Sequence[str], benign: Sequence[str],
                  prefix: str | None, *, seed: int = 0, probe_steps: int = 300) -> dict:
    """Every analysis for one model; arrays as lists so the result is JSON."""
    prefixes = {"none": None} | ({"prefix": prefix} if prefix else {})
    out: dict[str, Any] = {"first_token": L.first_token_table(
        {"m": model}, tokenizer, {"harmful": harmful, "benign": benign}, prefixes)}
    for row in out["first_token"]:
        row.pop("model")
    out["lens"] = {f"{s}/{p}": lens_refusal_by_layer(model, tokenizer, prompts, pre)
                   for s, prompts in (("harmful", harmful), ("benign", benign))
                   for p, pre in prefixes.items()}
    feats = P.collect_features(model, tokenizer, [*harmful, *benign])
    labels = np.array([1] * len(harmful) + [0] * len(benign))
    out["probe_accuracy"], out["direction"] = {}, {}
    for pooling in P.POOLINGS:
        probe, acc = P.heldout_probe_accuracy(feats[pooling], labels, seed=seed,
                                              steps=probe_steps)
        out["probe_accuracy"][pooling] = {k: v.tolist() for k, v in acc.items()}
        if prefix and pooling == "last":
            with_prefix = P.collect_features(model, tokenizer, harmful, prefix=prefix)
            shift = P.probe_score_shift(probe, feats[pooling][:, :len(harmful)],
                                        with_prefix[pooling])
            out["probe_shift_harmful"] = shift.tolist()
        out["direction"][pooling] = P.refusal_direction(feats[pooling][:, labels == 1],
                                                        feats[pooling][:, labels == 0])
    return out


def analyze(models: Mapping[str, Any], tokenizer: Any, harmful: Sequence[str],
            benign: Sequence[str], prefix: str | None = None, **kwargs: Any) -> dict:
    """Per-model analyses plus each model's direction cosine with the first model's."""
    results = {label: analyze_model(m, tokenizer, harmful, benign, prefix, **kwargs)
               for label, m in models.items()}
    first = next(iter(results.values()))["direction"]
    for r in results.values():
        r["direction_cosine_vs_first"] = {
            p: P.cosine_by_layer(r["direction"][p], first[p]).tolist() for p in P.POOLINGS}
    for r in results.values():
        r.pop("direction")
    return results


# --------------------------------------------------------------------------- plots
def make_plots(results: Mapping[str, dict], folder: Path) -> list[Path]:
    """Accuracy by layer, logit-lens heatmap, first-token mass bars, probe-score shift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, r in results.items():
        for pooling, style in (("last", "-"), ("mean", "--")):
            acc = r["probe_accuracy"][pooling]["test"]
            ax.plot(range(len(acc)), acc, style, marker="o", label=f"{label} ({pooling})")
    ax.set(xlabel="layer", ylabel="held-out accuracy", ylim=(0, 1.05),
           title="Linear probe harmful vs benign")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    paths.append(_save(fig, folder / "probe_accuracy.png"))

    rows = [(f"{label} | {key}", r["lens"][key]["refusal"]) for label, r in results.items()
            for key in r["lens"]]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.5))
    im = ax.imshow(np.array([v for _, v in rows]), aspect="auto", cmap="viridis")
    ax.set(yticks=range(len(rows)), yticklabels=[n for n, _ in rows], xlabel="layer",
           title="Logit lens: refusal-opener mass at the first answer position")
    ax.tick_params(axis="y", labelsize=7)
    fig.colorbar(im, ax=ax)
    paths.append(_save(fig, folder / "logit_lens.png"))

    cells = [(f"{label}\n{row['prompts']}/{row['prefix']}", row)
             for label, r in results.items() for row in r["first_token"]]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(cells)), 3.5))
    x = np.arange(len(cells))
    ax.bar(x - 0.2, [c["refusal"] for _, c in cells], 0.4, label="refusal openers")
    ax.bar(x + 0.2, [c["compliance"] for _, c in cells], 0.4, label="compliance openers")
    ax.set_xticks(x, [n for n, _ in cells], fontsize=6, rotation=45, ha="right")
    ax.set(ylabel="mean probability", title="First answer token")
    ax.legend(fontsize=7)
    paths.append(_save(fig, folder / "first_token.png"))

    if any("probe_shift_harmful" in r for r in results.values()):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for label, r in results.items():
            if "probe_shift_harmful" in r:
                ax.plot(r["probe_shift_harmful"], marker="o", label=label)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(xlabel="layer", ylabel="mean change of probe logit",
               title="Probe-score shift on harmful prompts when the prefix is added")
        ax.legend(fontsize=7)
        paths.append(_save(fig, folder / "probe_shift.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def report_text(results: Mapping[str, dict], prefix: str | None, n: tuple[int, int]) -> str:
    lines = ["# Mechanism analysis", "",
             f"{n[0]} harmful and {n[1]} benign test-split prompts; prefix: "
             f"{prefix!r}" if prefix else f"{n[0]} harmful and {n[1]} benign prompts; no prefix",
             "", "## First answer token (mean probability)", "",
             "| model | prompts | prefix | refusal | compliance | other |", "|---|---|---|---|---|---|"]
    for label, r in results.items():
        for row in r["first_token"]:
            lines.append(f"| {label} | {row['prompts']} | {row['prefix']} | "
                         f"{row['refusal']:.4f} | {row['compliance']:.4f} | {row['other']:.4f} |")
    lines += ["", "## Probes (held-out accuracy by layer, last token)", ""]
    for label, r in results.items():
        acc = r["probe_accuracy"]["last"]["test"]
        lines.append(f"- {label}: best {max(acc):.3f} at layer {int(np.argmax(acc))}; "
                     f"by layer {[round(a, 3) for a in acc]}")
    lines += ["", "## Refusal direction cosine with the first model (last token)", ""]
    for label, r in results.items():
        lines.append(f"- {label}: {[round(c, 3) for c in r['direction_cosine_vs_first']['last']]}")
    lines += ["", "Plots: plots/probe_accuracy.png, plots/logit_lens.png, "
              "plots/first_token.png, plots/probe_shift.png (when a prefix is given).", ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.mechanism_analysis",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="LABEL=SOURCE, repeatable")
    p.add_argument("--run", help="study run folder: analyze every checkpoints/<stage>")
    p.add_argument("--prefix")
    p.add_argument("--prefix-file", help="e.g. prefix.txt of an experiments.ping run")
    p.add_argument("--harmful", default="advbench")
    p.add_argument("--benign", default="persistbench,freshqa")
    p.add_argument("--n", type=int, default=32, help="prompts per class")
    p.add_argument("--split", default="test")
    p.add_argument("--probe-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from research.models import load_pretrained

    args = parse_args(argv)
    out = Path(args.out)
    if (out / "results.json").exists() and not args.overwrite:
        print(f"error: {out / 'results.json'} exists; pass --overwrite", file=sys.stderr)
        return 2
    prefix = args.prefix
    if args.prefix_file:
        prefix = Path(args.prefix_file).read_text(encoding="utf-8").strip() or None
    try:
        sources = model_sources(args.model, args.run)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    harmful = [r.prompt for r in sample_rows(args.harmful, args.split, args.n, args.seed)]
    benign = [r.prompt for r in sample_rows(args.benign, args.split, args.n, args.seed)]
    models, tokenizer = {}, None
    for label, source in sources.items():
        models[label], tokenizer = load_pretrained(source)
    results = analyze(models, tokenizer, harmful, benign, prefix, seed=args.seed,
                      probe_steps=args.probe_steps)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"models": sources, "prefix": prefix, "n_harmful": len(harmful),
         "n_benign": len(benign), "token_lists": {"refusal": L.REFUSAL_OPENERS,
                                                   "compliance": L.COMPLIANCE_OPENERS},
         "analyses": results}, indent=2) + "\n")
    make_plots(results, out / "plots")
    (out / "report.md").write_text(report_text(results, prefix, (len(harmful), len(benign))))
    print(report_text(results, prefix, (len(harmful), len(benign))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
