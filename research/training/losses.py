"""Response-only language-model losses over a split NNX decoder.

Batch convention (shared with `research.data.batches`), all arrays `[B, T]`:
- `tokens` int32 token ids;
- `attention_mask` 1 for a real token, 0 for padding (left or right padding both work);
- `loss_mask` 1 where the token *at* position t is a response token to be predicted.
  The logits at position t-1 predict `tokens[t]`, so the loss pairs
  `logits[:, :-1]` with `tokens[:, 1:]` weighted by `loss_mask[:, 1:]`;
  `loss_mask[:, 0]` is ignored (nothing predicts the first token).
- optional `loss_rows` int32 `[B, R]`: per row, every position t whose logits predict a
  response token, padded with T-1 (`research.data.batches.response_rows`; training
  batches carry it). The SFT loss then unembeds only those positions.

Losses are returned as a *sum* over loss tokens together with the token count, so that
gradient accumulation can divide once by the batch's total count and equal the
full-batch mean exactly (microbatches with different numbers of response tokens are
weighted by their token counts, not averaged as equals).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

Batch = dict[str, jax.Array]
BATCH_KEYS = ("tokens", "attention_mask", "loss_mask")


class LossSum(NamedTuple):
    """Summed loss over the loss tokens of a (micro)batch, and how many there were."""

    loss_sum: jax.Array  # scalar float32
    tokens: jax.Array    # scalar float32


def check_batch(batch: Batch) -> None:
    """Validate the batch convention at the boundary (keys, ranks, equal shapes)."""
    missing = [key for key in BATCH_KEYS if key not in batch]
    if missing:
        raise KeyError(f"batch is missing {missing}; expected keys {BATCH_KEYS}")
    chex.assert_rank(batch["tokens"], 2)
    chex.assert_equal_shape([batch[key] for key in BATCH_KEYS])
    if "loss_rows" in batch:
        chex.assert_rank(batch["loss_rows"], 2)
        chex.assert_equal_shape_prefix([batch["tokens"], batch["loss_rows"]], 1)
        if not jnp.issubdtype(batch["loss_rows"].dtype, jnp.integer):
            raise TypeError(f"batch['loss_rows'] must hold integer positions, got "
                            f"{batch['loss_rows'].dtype}")


def token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Next-token negative log-likelihood `[B, T-1]` from logits `[B, T, V]`."""
    chex.assert_rank(logits, 3)
    logits = logits[:, :-1].astype(jnp.float32)
    targets = tokens[:, 1:]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - target_logit


def response_weights(batch: Batch) -> jax.Array:
    """Float weights `[B, T-1]` of the predicted positions that count in the loss."""
    mask = batch["loss_mask"][:, 1:] * batch["attention_mask"][:, 1:]
    return mask.astype(jnp.float32)


def masked_nll_sum(logits: jax.Array, batch: Batch) -> LossSum:
    """Summed response-token cross-entropy and the number of response tokens."""
    weights = response_weights(batch)
    nll = token_nll(logits, batch["tokens"])
    return LossSum(jnp.sum(nll * weights), jnp.sum(weights))


def take_rows(x: jax.Array, rows: jax.Array) -> jax.Array:
    """`x[b, rows[b]]` for `x [B, T-1, ...]` and `rows [B, R]`; out-of-range positions
    (the T-1 padding of `loss_rows`) read zeros and take no gradient."""
    index = rows.reshape(rows.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1, mode="fill", fill_value=0)


def hidden_nll_sum(model: Any, hidden: jax.Array, batch: Batch) -> LossSum:
    """`masked_nll_sum` from the final hidden states `[B, T, D]` instead of logits.

    Why: the predicting positions are unembedded as one `[positions, D] @ [D, V]` matmul
    (no `[B, T, V]` logits to slice), and the target logit is a row-wise dot with the
    gathered output embedding, so the backward pass has no `[.., V]` scatter. On XLA:CPU
    this cut the output head's share of a training step by about a quarter (~4% of the
    step for SmolLM2-135M) and its temporary memory by ~270 MB. With `loss_rows` only the
    positions that predict a response token are unembedded (all `B*(T-1)` without).
    """
    D = hidden.shape[-1]
    every = response_weights(batch)
    h, targets, weights = hidden[:, :-1], batch["tokens"][:, 1:], every
    if "loss_rows" in batch:
        h, targets, weights = (take_rows(x, batch["loss_rows"]) for x in (h, targets, weights))
    h, targets, weights = h.reshape(-1, D), targets.reshape(-1), weights.reshape(-1)
    log_z = jax.nn.logsumexp(model.unembed(h).astype(jnp.float32), axis=-1)
    nll = log_z - model.target_logits(h, targets).astype(jnp.float32)  # as token_nll
    loss_sum, count = jnp.sum(nll * weights), jnp.sum(weights)
    if "loss_rows" in batch:  # rows that miss a response token: NaN, never a silent drop
        complete = count == jnp.sum(every)
        loss_sum = jnp.where(complete, loss_sum, jnp.nan)
    return LossSum(loss_sum, count)


def per_example_mean_nll(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Per-example mean response loss `[B]` and response-token counts `[B]`.

    Examples without response tokens get loss 0 (their count says so).
    """
    weights = response_weights(batch)
    nll = token_nll(logits, batch["tokens"])
    counts = jnp.sum(weights, axis=-1)
    return jnp.sum(nll * weights, axis=-1) / jnp.maximum(counts, 1.0), counts


def sft_loss_sum(
    trainable: nnx.State,
    frozen: nnx.State,
    graphdef: nnx.GraphDef,
    batch: Batch,
    *,
    deltas: dict[str, jax.Array] | None = None,
    lora_enabled: bool = True,
    remat: bool = False,
) -> tuple[jax.Array, dict[str, Any]]:
    """SFT objective as a differentiable sum: `(loss_sum, {"tokens": n})`.

    `deltas` passes straight to the decoder's activation sites, so perturbation methods
    (Vaccine) differentiate this same function with respect to them.
    """
    model = nnx.merge(graphdef, trainable, frozen)
    out = model(batch["tokens"], attention_mask=batch["attention_mask"], deltas=deltas,
                lora_enabled=lora_enabled, remat=remat, logits="none")
    total = hidden_nll_sum(model, out.hidden, batch)
    return total.loss_sum, {"tokens": total.tokens}
