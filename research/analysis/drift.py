"""Harmful embedding drift: how far fine-tuning moves the aligned model's activations.

Measured at an activation site (`attn_out` by default, the Vaccine site) on the
alignment data, over real tokens only. Two quantities, named for what they are:
- `sum_sq`: the sum of squared L2 distances over tokens (what the Vaccine reference code
  logs), per layer and in total;
- `l2`: its square root, the L2 norm of the stacked difference (the paper's wording).
"""

from __future__ import annotations

from typing import Iterable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.models.transformer import Decoder


def drift_sum_sq(aligned: jax.Array, finetuned: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-layer sum over real tokens of ||finetuned - aligned||^2: `[L]` from `[L,B,T,D]`."""
    chex.assert_equal_shape([aligned, finetuned])
    chex.assert_shape(mask, aligned.shape[1:3])
    sq = jnp.sum(jnp.square(finetuned.astype(jnp.float32) - aligned.astype(jnp.float32)), -1)
    return jnp.sum(sq * mask.astype(jnp.float32)[None], axis=(1, 2))


@jax.jit
def _site_activations(graphdef, state, tokens, attention_mask):
    model = nnx.merge(graphdef, state)
    return model(tokens, attention_mask=attention_mask, capture=("attn_out", "resid_post"),
                 logits="none").captured


def embedding_drift(aligned: Decoder, finetuned: Decoder, batches: Iterable[dict],
                    site: str = "attn_out") -> dict[str, object]:
    """Drift between two models at `site` over `batches` (dicts with `tokens` and
    `attention_mask`): per-layer and total `sum_sq` and `l2`, plus the token count."""
    if site not in ("attn_out", "resid_post"):
        raise ValueError(f"drift site must be 'attn_out' or 'resid_post', got {site!r}")
    graph_a, state_a = nnx.split(aligned)
    graph_f, state_f = nnx.split(finetuned)
    per_layer = np.zeros(aligned.config.num_layers, np.float64)
    tokens_seen = 0
    for batch in batches:
        tokens = jnp.asarray(batch["tokens"])
        mask = jnp.asarray(batch["attention_mask"]).astype(bool)
        acts_a = _site_activations(graph_a, state_a, tokens, mask)[site]
        acts_f = _site_activations(graph_f, state_f, tokens, mask)[site]
        per_layer += np.asarray(drift_sum_sq(acts_a, acts_f, mask), np.float64)
        tokens_seen += int(mask.sum())
    total = float(per_layer.sum())
    return {"site": site, "tokens": tokens_seen,
            "sum_sq_per_layer": per_layer.tolist(), "sum_sq_total": total,
            "l2_per_layer": np.sqrt(per_layer).tolist(), "l2_total": float(np.sqrt(total))}
