"""Per-example self-influence: Self-Inf(z) = ||grad_theta loss(z)||^2 and Self-Inf-N.

loss(z) is the example's *mean* response-token cross-entropy (prompt tokens masked, as in
training), so a benign example whose few answer tokens the aligned model finds surprising
gets a large gradient. Self-Inf is biased towards very short answers (a mean over few
tokens is noisy and large); Self-Inf-N adds log(answer tokens + 1) to the log score to
correct for it:

    Self-Inf-N(z) = log(Self-Inf(z) + 1) + log(answer tokens + 1)

"Answer tokens" are the example's response targets in the loss mask (answer text plus the
template's end-of-turn marker), the same tokens the mean loss runs over.

theta is the trainable subset chosen by `split_model(model, mode)`: "lora" (default;
adapters only) or "full" (all base weights). With freshly attached adapters (B = 0) the
gradient reaches B only, and grad_B = scale * A^T grad_W per layer: a fixed random
projection (A is random) of the full weight gradient, i.e. a cheap sketch of the
full-parameter score rather than a different quantity.

Per-example gradients come from `vmap(grad)` over a chunk of examples, jitted; the chunk
size bounds memory (per-example gradients of a chunk and its activations live at once).
Examples are padded to a few bucket lengths, right-padded, so padding never changes a
score (causal attention: real tokens never see the padding) and compilations stay few.
Only the positions that predict answer tokens are unembedded (a fixed-size window per
length bucket), which matches the full-logit loss exactly and saves the vocabulary-sized
work on the prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.data.batches import DEFAULT_BUCKETS, bucket_for, collate
from research.data.chat import ChatExample
from research.training.losses import Batch, check_batch, hidden_nll_sum, response_weights

# (trainable, frozen, batch [C, T], window=W) -> (self_inf [C], answer_tokens [C], loss [C])
Scorer = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Scores:
    """Scores of a pool, aligned with its examples (float64/int64 numpy arrays)."""

    self_inf: np.ndarray       # [N] squared gradient norm
    answer_tokens: np.ndarray  # [N] response targets counted by the loss
    loss: np.ndarray           # [N] mean response loss

    @property
    def self_inf_n(self) -> np.ndarray:
        return np.asarray(normalized_self_influence(self.self_inf, self.answer_tokens),
                          np.float64)

    def subset(self, idx: np.ndarray) -> "Scores":
        """The scores of examples `idx` (indices or a boolean mask), in that order."""
        return Scores(self.self_inf[idx], self.answer_tokens[idx], self.loss[idx])


@jax.jit
def normalized_self_influence(self_inf: jax.Array | np.ndarray,
                              answer_tokens: jax.Array | np.ndarray) -> jax.Array:
    """Self-Inf-N = log(Self-Inf + 1) + log(answer tokens + 1), elementwise (float32)."""
    self_inf = jnp.asarray(self_inf, jnp.float32)
    answer_tokens = jnp.asarray(answer_tokens, jnp.float32)
    chex.assert_equal_shape([self_inf, answer_tokens])
    return jnp.log1p(self_inf) + jnp.log1p(answer_tokens)


def squared_norm(tree: nnx.State) -> jax.Array:
    """Sum of squares over every leaf, in float32."""
    leaves = jax.tree.leaves(tree)
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)


def window_nll(model: nnx.Module, hidden: jax.Array, example: Batch,
               window: int) -> tuple[jax.Array, jax.Array]:
    """Mean response loss from final hidden states `[T, D]`, unembedding only the first
    `window` predicted positions that carry a response target: the training loss
    (`hidden_nll_sum`) with its `loss_rows` found in-jit, at one static width per bucket.

    The vocabulary-sized logits are the largest tensors of the step; the prompt (often a
    system prompt much longer than a short answer) needs none of them. The caller makes
    `window` at least the number of response targets; a smaller one gives NaN.
    """
    one = {k: v[None] for k, v in example.items()}
    last = example["tokens"].shape[0] - 1  # the padding position of loss_rows
    rows = jnp.nonzero(response_weights(one)[0], size=window, fill_value=last)[0]
    total = hidden_nll_sum(model, hidden[None], {**one, "loss_rows": rows[None]})
    return total.loss_sum / jnp.maximum(total.tokens, 1.0), total.tokens


def example_loss(trainable: nnx.State, frozen: nnx.State, graphdef: nnx.GraphDef,
                 example: Batch, window: int, lora_enabled: bool = True
                 ) -> tuple[jax.Array, tuple]:
    """Mean response loss of one example (arrays `[T]`); aux = (loss, answer tokens)."""
    model = nnx.merge(graphdef, trainable, frozen)
    out = model(example["tokens"][None], attention_mask=example["attention_mask"][None],
                lora_enabled=lora_enabled, logits="none")
    loss, count = window_nll(model, out.hidden[0], example, window)
    return loss, (loss, count)


def example_self_influence(trainable: nnx.State, frozen: nnx.State, graphdef: nnx.GraphDef,
                           example: Batch, window: int, lora_enabled: bool = True
                           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(Self-Inf, answer tokens, loss) of one example; the gradient is reduced at once."""
    grads, (loss, count) = jax.grad(example_loss, has_aux=True)(
        trainable, frozen, graphdef, example, window, lora_enabled)
    return squared_norm(grads), count, loss


def make_scorer(graphdef: nnx.GraphDef, *, lora_enabled: bool = True) -> Scorer:
    """Jitted per-example scores of a chunk `[C, T]`: vmap of the single-example gradient."""
    def score(trainable: nnx.State, frozen: nnx.State, batch: Batch, window: int):
        check_batch(batch)
        one = lambda ex: example_self_influence(trainable, frozen, graphdef, ex, window,
                                                lora_enabled)
        return jax.vmap(one)(batch)
    return jax.jit(score, static_argnames="window")


def make_single_scorer(graphdef: nnx.GraphDef, *, lora_enabled: bool = True) -> Scorer:
    """Jitted scores of one example at a time (`[1, T]`): the per-example-loop baseline."""
    def score(trainable: nnx.State, frozen: nnx.State, batch: Batch, window: int):
        check_batch(batch)
        chex.assert_axis_dimension(batch["tokens"], 0, 1)
        example = {key: value[0] for key, value in batch.items()}
        out = example_self_influence(trainable, frozen, graphdef, example, window,
                                     lora_enabled)
        return tuple(x[None] for x in out)
    return jax.jit(score, static_argnames="window")


def response_window(answer_counts: Sequence[int], padded_length: int) -> int:
    """Smallest power of two (>= 8) covering every count, at most `padded_length - 1`.

    Chosen per length bucket from the whole pool, so chunking never changes it and each
    bucket compiles once.
    """
    need = max(int(c) for c in answer_counts)
    window = 8
    while window < need:
        window *= 2
    return max(1, min(window, padded_length - 1))


def plan_chunks(lengths: Sequence[int], chunk_size: int,
                buckets: Sequence[int] = DEFAULT_BUCKETS) -> list[tuple[int, np.ndarray]]:
    """(padded length, indices) chunks: examples grouped by bucket, in index order.

    Deterministic, so a pool is always scored the same way.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    by_bucket: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_bucket.setdefault(bucket_for(int(n), buckets), []).append(i)
    return [(length, np.asarray(members[s:s + chunk_size]))
            for length, members in sorted(by_bucket.items())
            for s in range(0, len(members), chunk_size)]


def score_examples(scorer: Scorer, trainable: nnx.State, frozen: nnx.State,
                   examples: Sequence[ChatExample], *, chunk_size: int, pad_id: int,
                   buckets: Sequence[int] = DEFAULT_BUCKETS) -> Scores:
    """Score a pool chunk by chunk; a short last chunk is padded with empty rows."""
    if not examples:
        raise ValueError("score_examples needs at least one example")
    no_answer = [ex.uid for ex in examples if not np.any(ex.loss_mask[1:])]
    if no_answer:
        raise ValueError(f"{len(no_answer)} examples have no answer token to score, "
                         f"e.g. {no_answer[:3]}")
    n = len(examples)
    answers = np.asarray([int(np.sum(ex.loss_mask[1:])) for ex in examples])
    plan = plan_chunks([len(e) for e in examples], chunk_size, buckets)
    windows = {length: response_window(
        [answers[i] for p, idx in plan if p == length for i in idx], length)
        for length, _ in plan}
    self_inf, tokens, loss = np.zeros(n), np.zeros(n, np.int64), np.zeros(n)
    for length, idx in plan:
        batch = collate(examples, idx, length, chunk_size, pad_id)
        s, c, l = jax.device_get(scorer(trainable, frozen, batch, window=windows[length]))
        k = len(idx)
        self_inf[idx], tokens[idx], loss[idx] = s[:k], c[:k], l[:k]
    if not np.all(np.isfinite(self_inf)):
        bad = [examples[i].uid for i in np.flatnonzero(~np.isfinite(self_inf))[:3]]
        raise FloatingPointError(f"non-finite Self-Inf for examples {bad}")
    return Scores(self_inf, tokens, loss)


def chunk_size_for_budget(trainable: nnx.State, budget_bytes: int,
                          activation_bytes_per_example: int = 0) -> int:
    """Largest chunk whose per-example gradients (and activations) fit `budget_bytes`."""
    grad_bytes = sum(x.size * 4 for x in jax.tree.leaves(trainable))
    per_example = grad_bytes + max(activation_bytes_per_example, 0)
    return max(1, int(budget_bytes // per_example))
