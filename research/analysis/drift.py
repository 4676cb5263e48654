"""Harmful embedding drift: how far fine-tuning moves the aligned model's activations.

Measured at an activation site (`attn_out` by default, the Vaccine site) on the
alignment data, over real tokens only (attention mask). With h_ref the reference
(starting, aligned) model's activations and dh the fine-tuned minus the reference ones,
these quantities, named for what they are, per layer and in total:
- `sum_sq`: the sum over real tokens of ||dh||^2 (what the Vaccine reference code logs);
- `l2`: its square root, the L2 norm of the stacked difference (the paper's wording);
- `ref_sum_sq`: the sum over the same tokens of ||h_ref||^2;
- `relative`: ||dh|| / ||h_ref|| = sqrt(sum_sq / ref_sum_sq), the drift as a fraction of
  the reference activations' norm at the same site and tokens (comparable across
  starting models whose activations differ in scale).
Totals add the sums over layers (and examples) first, so `l2_total = sqrt(sum of
sum_sq_per_layer)` and `relative_total = sqrt(sum of sum_sq / sum of ref_sum_sq)`.

Two entry points: `embedding_drift` compares two models; `make_drift_curve` returns a
function of the fine-tuned trainable parameters for tracking drift (and the alignment
loss) as a curve during stage 2, with the aligned activations computed once. Its
points also hold each example's `sum_sq` and `ref_sum_sq`, from which `drift_result`
gives the totals a percentile-bootstrap CI over the alignment examples (which examples
were drawn is the uncertainty a total over a fixed set has) and keeps the per-example
values, so `paired_drift_difference` can compare two arms' relative drift on the same
examples with a paired bootstrap.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.models.transformer import Decoder
from research.training.losses import masked_nll_sum

DRIFT_SITES = ("attn_out", "mlp_out", "resid_post")


def check_site(site: str) -> None:
    if site not in DRIFT_SITES:
        raise ValueError(f"drift site must be one of {DRIFT_SITES}, got {site!r}")


def drift_sum_sq_rows(aligned: jax.Array, finetuned: jax.Array, mask: jax.Array
                      ) -> jax.Array:
    """Sum over each row's real tokens of ||finetuned - aligned||^2: `[L, B]` from
    `[L, B, T, D]` activations and a `[B, T]` mask."""
    chex.assert_equal_shape([aligned, finetuned])
    chex.assert_shape(mask, aligned.shape[1:3])
    sq = jnp.sum(jnp.square(finetuned.astype(jnp.float32) - aligned.astype(jnp.float32)), -1)
    return jnp.sum(sq * mask.astype(jnp.float32)[None], axis=2)


def drift_sum_sq(aligned: jax.Array, finetuned: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-layer sum over real tokens of ||finetuned - aligned||^2: `[L]` from `[L,B,T,D]`."""
    return jnp.sum(drift_sum_sq_rows(aligned, finetuned, mask), axis=1)


def reference_sum_sq_rows(reference: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum over each row's real tokens of ||reference||^2: `[L, B]` from `[L, B, T, D]`
    activations and a `[B, T]` mask (the denominator of the relative drift)."""
    chex.assert_shape(mask, reference.shape[1:3])
    sq = jnp.sum(jnp.square(reference.astype(jnp.float32)), -1)
    return jnp.sum(sq * mask.astype(jnp.float32)[None], axis=2)


def relative_drift(sum_sq: Sequence[float] | np.ndarray,
                   ref_sum_sq: Sequence[float] | np.ndarray) -> float:
    """||dh|| / ||h_ref|| = sqrt(sum(sum_sq) / sum(ref_sum_sq)) over all given entries
    (layers, examples); the reference must have a nonzero norm."""
    num = float(np.sum(np.asarray(sum_sq, np.float64)))
    den = float(np.sum(np.asarray(ref_sum_sq, np.float64)))
    if not den > 0.0:
        raise ValueError("relative drift needs reference activations with a nonzero norm")
    return float(np.sqrt(num / den))


def summarize(sum_sq_per_layer: np.ndarray, tokens: int, site: str,
              ref_sum_sq_per_layer: np.ndarray | None = None) -> dict[str, object]:
    """The report's drift record from per-layer sums of squares (and, given the
    reference's per-layer sums, the relative drift per layer and in total)."""
    per_layer = np.asarray(sum_sq_per_layer, np.float64)
    total = float(per_layer.sum())
    out = {"site": site, "tokens": int(tokens),
           "sum_sq_per_layer": per_layer.tolist(), "sum_sq_total": total,
           "l2_per_layer": np.sqrt(per_layer).tolist(), "l2_total": float(np.sqrt(total))}
    if ref_sum_sq_per_layer is not None:
        ref = np.asarray(ref_sum_sq_per_layer, np.float64)
        chex.assert_equal_shape([per_layer, ref])
        out.update(ref_sum_sq_per_layer=ref.tolist(),
                   relative_per_layer=[relative_drift(s, r) for s, r in zip(per_layer, ref)],
                   relative_total=relative_drift(per_layer, ref))
    return out


def site_activations(state: nnx.State, tokens: jax.Array, attention_mask: jax.Array, *,
                     graphdef: nnx.GraphDef, site: str) -> jax.Array:
    """`[L, B, T, D]` activations of a model state at `site` (no logits computed)."""
    model = nnx.merge(graphdef, state)
    return model(tokens, attention_mask=attention_mask, capture=(site,),
                 logits="none").captured[site]


_site_activations = jax.jit(site_activations, static_argnames=("graphdef", "site"))


def embedding_drift(aligned: Decoder, finetuned: Decoder, batches: Iterable[dict],
                    site: str = "attn_out") -> dict[str, object]:
    """Drift between two models at `site` over `batches` (dicts with `tokens` and
    `attention_mask`): per-layer and total `sum_sq`, `l2` and `relative` (against the
    `aligned` model's activations), plus the token count."""
    check_site(site)
    if aligned.config != finetuned.config:
        raise ValueError("drift compares two models of the same architecture")
    graph_a, state_a = nnx.split(aligned)
    graph_f, state_f = nnx.split(finetuned)
    per_layer = np.zeros(aligned.config.num_layers, np.float64)
    ref_per_layer = np.zeros(aligned.config.num_layers, np.float64)
    tokens_seen = 0
    for batch in batches:
        tokens = jnp.asarray(batch["tokens"])
        mask = jnp.asarray(batch["attention_mask"]).astype(bool)
        acts_a = _site_activations(state_a, tokens, mask, graphdef=graph_a, site=site)
        acts_f = _site_activations(state_f, tokens, mask, graphdef=graph_f, site=site)
        per_layer += np.asarray(drift_sum_sq(acts_a, acts_f, mask), np.float64)
        ref_per_layer += np.asarray(reference_sum_sq_rows(acts_a, mask).sum(1), np.float64)
        tokens_seen += int(mask.sum())
    return summarize(per_layer, tokens_seen, site, ref_per_layer)


def _drift_and_loss(params: nnx.State, frozen: nnx.State, reference: jax.Array,
                    batch: dict, *, graphdef: nnx.GraphDef, site: str
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`[L, B]` sum_sq against `reference` acts, alignment-loss sum and its token count."""
    model = nnx.merge(graphdef, params, frozen)
    out = model(batch["tokens"], attention_mask=batch["attention_mask"], capture=(site,))
    mask = batch["attention_mask"].astype(bool)
    loss = masked_nll_sum(out.logits, batch)
    return drift_sum_sq_rows(reference, out.captured[site], mask), loss.loss_sum, loss.tokens


_drift_and_loss_jit = jax.jit(_drift_and_loss, static_argnames=("graphdef", "site"))


def make_drift_curve(graphdef: nnx.GraphDef, frozen: nnx.State, aligned_params: nnx.State,
                     batches: Iterable[dict], site: str = "attn_out"
                     ) -> Callable[[nnx.State], dict[str, object]]:
    """`curve(params) -> drift record + alignment_loss + sum_sq_per_example +
    ref_sum_sq_per_example` on fixed alignment `batches` (rows without real tokens are
    padding and not examples; per-example values are summed over layers).

    `graphdef`/`frozen` are the stage-2 split (`split_model`); the aligned activations
    come from `aligned_params` once, here, so each point costs one forward pass per
    batch. Call it every k steps of stage 2 to draw drift and alignment loss together.
    """
    check_site(site)
    batches = [{k: jnp.asarray(b[k]) for k in ("tokens", "attention_mask", "loss_mask")}
               for b in batches]
    if not batches:
        raise ValueError("make_drift_curve needs at least one alignment batch")
    graph_a, state_a = nnx.split(nnx.merge(graphdef, aligned_params, frozen))
    references = [_site_activations(state_a, b["tokens"], b["attention_mask"],
                                    graphdef=graph_a, site=site) for b in batches]
    tokens = sum(int(b["attention_mask"].astype(bool).sum()) for b in batches)
    real = [np.asarray(b["attention_mask"]).any(axis=1) for b in batches]
    ref_rows = [np.asarray(reference_sum_sq_rows(ref, b["attention_mask"].astype(bool)),
                           np.float64) for ref, b in zip(references, batches)]
    ref_per_layer = sum(r.sum(axis=1) for r in ref_rows)
    ref_per_example = [x for r, rows in zip(ref_rows, real)
                       for x in r.sum(axis=0)[rows].tolist()]

    def curve(params: nnx.State) -> dict[str, object]:
        per_layer = np.zeros(references[0].shape[0], np.float64)
        per_example: list[float] = []
        loss_sum, loss_tokens = 0.0, 0.0
        for ref, b, rows in zip(references, batches, real):
            sq, ls, lt = _drift_and_loss_jit(params, frozen, ref, b, graphdef=graphdef,
                                             site=site)
            sq = np.asarray(sq, np.float64)
            per_layer += sq.sum(axis=1)
            per_example += sq.sum(axis=0)[rows].tolist()
            loss_sum, loss_tokens = loss_sum + float(ls), loss_tokens + float(lt)
        return dict(summarize(per_layer, tokens, site, ref_per_layer),
                    alignment_loss=loss_sum / max(loss_tokens, 1.0),
                    sum_sq_per_example=per_example,
                    ref_sum_sq_per_example=list(ref_per_example))

    return curve


def _resamples(n: int, seed: int, n_boot: int) -> np.ndarray:
    """`[n_boot, n]` indices of bootstrap resamples of n examples (with replacement)."""
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def _metric(value: float, boot: np.ndarray, n: int) -> dict[str, float | int]:
    low, high = np.quantile(boot, [0.025, 0.975])
    return {"value": float(value), "ci_low": float(low), "ci_high": float(high), "n": int(n)}


def total_with_ci(values: Sequence[float], *, seed: int = 0, n_boot: int = 2000
                  ) -> dict[str, float | int]:
    """Sum of `values` with a 95% percentile-bootstrap CI over them (resampled with
    replacement), as a `{"value", "ci_low", "ci_high", "n"}` metric."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("a total needs at least one value")
    return _metric(x.sum(), x[_resamples(x.size, seed, n_boot)].sum(1), x.size)


def _per_example_arrays(per_example: dict) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(per_example["sum_sq"], np.float64)
    r = np.asarray(per_example["ref_sum_sq"], np.float64)
    if s.size == 0 or s.shape != r.shape:
        raise ValueError(f"per-example drift needs as many sum_sq as ref_sum_sq values, "
                         f"at least one (got {s.size} and {r.size})")
    if not (r > 0).all():
        raise ValueError("relative drift needs every example's reference norm > 0")
    return s, r


def relative_with_ci(per_example: dict, *, seed: int = 0, n_boot: int = 2000
                     ) -> dict[str, float | int]:
    """The relative drift sqrt(sum sum_sq / sum ref_sum_sq) of per-example values
    (`{"sum_sq": [...], "ref_sum_sq": [...]}`) with a 95% percentile-bootstrap CI over
    the examples (each resample's ratio of sums; the same resamples as
    `total_with_ci` with the same seed)."""
    s, r = _per_example_arrays(per_example)
    idx = _resamples(s.size, seed, n_boot)
    return _metric(relative_drift(s, r), np.sqrt(s[idx].sum(1) / r[idx].sum(1)), s.size)


def paired_drift_difference(a_per_example: dict, b_per_example: dict, *, seed: int = 0,
                            n_boot: int = 2000) -> dict[str, float | int]:
    """relative drift of b minus that of a, with a paired 95% percentile-bootstrap CI
    over the examples: each resample draws the same examples for both arms.

    Each argument is a `drift_result(...)["per_example"]` record (`{"sum_sq": [...],
    "ref_sum_sq": [...]}`); both must list the same examples in the same order (curves
    measured on the same drift batches). Each arm keeps its own reference, so arms that
    started from different models compare drift relative to their own starts."""
    sa, ra = _per_example_arrays(a_per_example)
    sb, rb = _per_example_arrays(b_per_example)
    if sa.size != sb.size:
        raise ValueError(f"a paired drift difference needs the same examples in both arms "
                         f"(got {sa.size} and {sb.size})")
    idx = _resamples(sa.size, seed, n_boot)
    boot = (np.sqrt(sb[idx].sum(1) / rb[idx].sum(1))
            - np.sqrt(sa[idx].sum(1) / ra[idx].sum(1)))
    return _metric(relative_drift(sb, rb) - relative_drift(sa, ra), boot, sa.size)


def drift_result(point: dict[str, object], *, seed: int = 0) -> dict[str, object]:
    """A curve point as results.json reports it: `sum_sq_total` and `l2_total` (its
    square root, so the CI bounds are the roots of the sum's) and `relative_total`
    (||dh|| / ||h_ref||) with CIs over examples, the per-layer values, the alignment
    loss, the site, `per_example` (`{"sum_sq": [...], "ref_sum_sq": [...]}`, the input
    of `paired_drift_difference`) and what a caller added (`format_counts`: rows read,
    kept and skipped). A point without reference sums (`ref_sum_sq_per_example`) gets
    no relative drift and no `ref_sum_sq` per example."""
    sum_sq = total_with_ci(point["sum_sq_per_example"], seed=seed)
    l2 = {k: float(np.sqrt(sum_sq[k])) for k in ("value", "ci_low", "ci_high")}
    per_example = {"sum_sq": list(point["sum_sq_per_example"])}
    relative = {}
    if "ref_sum_sq_per_example" in point:
        per_example["ref_sum_sq"] = list(point["ref_sum_sq_per_example"])
        relative = {"relative_total": relative_with_ci(per_example, seed=seed),
                    "relative_per_layer": point["relative_per_layer"]}
    return {"site": point["site"], "examples": sum_sq["n"], "tokens": point["tokens"],
            "sum_sq_total": sum_sq, "l2_total": dict(l2, n=sum_sq["n"]), **relative,
            "sum_sq_per_layer": point["sum_sq_per_layer"],
            "l2_per_layer": point["l2_per_layer"],
            "alignment_loss": point["alignment_loss"],
            **({"format_counts": point["format_counts"]} if "format_counts" in point else {}),
            "per_example": per_example}
