"""Batched KV-cache generation: one jitted prefill + compiled decode loop.

Prompts are left-padded to a bucketed length and batches to a fixed size, so a new
prompt length reuses a compiled program instead of recompiling. Greedy decoding when
temperature is 0, otherwise temperature/top-p sampling from an explicit PRNG key.
Each sequence stops at its own EOS; the loop ends when all have stopped.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.models.chat import answer_prefix, render_prompt
from research.models.transformer import Decoder, KVCache

PROMPT_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
                  6144, 8192)


def bucket_length(n: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> int:
    for b in buckets:
        if n <= b:
            return b
    return -(-n // buckets[-1]) * buckets[-1]


def sample_token(logits: jax.Array, key: jax.Array, temperature: jax.Array,
                 top_p: jax.Array, greedy: bool) -> jax.Array:
    """Next token `[B]` from float32 logits `[B, V]` (nucleus sampling when not greedy)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / jnp.maximum(temperature, 1e-6)
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    sorted_logits = jnp.where(mass_before < top_p, sorted_logits, -jnp.inf)
    choice = jax.random.categorical(key, sorted_logits, axis=-1)
    return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


_LAST_LAYERS: list = []  # [(stacked arrays, their per-layer slices)] of the last model


def per_layer_weights(model: Decoder) -> list[dict[str, jax.Array]]:
    """`model.layer_list()`, reused while the model's stacked weights are the same arrays.

    Generation runs the layers unrolled over these (a scan would copy every layer's
    weights on every decode step); slicing once per model, not per call or batch, keeps
    that copy off the time to first token. Holds one model's slices until the next. A
    per-layer model (`unstack_layers`) hands over its own arrays.
    """
    if model.per_layer:
        return model.layer_list()
    stacked = tuple(jax.tree.leaves(model.layers.arrays()))
    if _LAST_LAYERS and len(_LAST_LAYERS[0][0]) == len(stacked) and all(
            a is b for a, b in zip(_LAST_LAYERS[0][0], stacked)):
        return _LAST_LAYERS[0][1]
    layers = model.layer_list()
    _LAST_LAYERS[:] = [(stacked, layers)]
    return layers


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos_ids", "greedy"))
def _generate_jit(graphdef, state, layers, tokens, mask, key, temperature, top_p, *,
                  max_new_tokens: int, eos_ids: tuple[int, ...], greedy: bool):
    model = nnx.merge(graphdef, state)
    B, P = tokens.shape
    cache = KVCache.init(model.config, B, P + max_new_tokens, model.compute_dtype,
                         per_layer=True)
    out = model(tokens, attention_mask=mask, cache=cache, logits="last", layers=layers)
    eos = jnp.asarray(eos_ids or (-1,), jnp.int32)
    key, sub = jax.random.split(key)
    first = sample_token(out.logits, sub, temperature, top_p, greedy)
    generated = jnp.zeros((B, max_new_tokens), jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, eos)
    lengths = jnp.ones((B,), jnp.int32)

    def cond(carry):
        step, _, _, done, _, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, cache, last, done, generated, lengths, key = carry
        out = model(last[:, None], attention_mask=jnp.ones((B, 1), bool), cache=cache,
                    logits="last", layers=layers)
        key, sub = jax.random.split(key)
        token = sample_token(out.logits, sub, temperature, top_p, greedy)
        token = jnp.where(done, eos[0], token)
        generated = generated.at[:, step].set(token)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(token, eos)
        return step + 1, out.cache, token, done, generated, lengths, key

    carry = (jnp.ones((), jnp.int32), out.cache, first, done, generated, lengths, key)
    _, _, _, _, generated, lengths, _ = jax.lax.while_loop(cond, body, carry)
    return generated, lengths


def generate_ids(model: Decoder, prompt_ids: Sequence[Sequence[int]], *,
                 max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 key: jax.Array | None = None, eos_ids: Sequence[int] | None = None,
                 pad_id: int = 0, batch_size: int = 16) -> list[list[int]]:
    """New token ids for each prompt (EOS excluded), in the prompts' order.

    Batches are filled in order of prompt length so padding stays small; the batch is
    padded to `batch_size` rows and prompts to a length bucket to reuse compilations.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} is empty after tokenization")
    key = jax.random.key(0) if key is None else key
    eos = tuple(int(e) for e in (model.config.eos_ids if eos_ids is None else eos_ids))
    graphdef, state = nnx.split(model)
    layers = per_layer_weights(model)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results: list[list[int]] = [[] for _ in prompt_ids]
    # rows per batch: a power of two up to batch_size, so batch shapes are bucketed too
    batch_size = min(batch_size, 1 << max(0, len(prompt_ids) - 1).bit_length())
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        P = bucket_length(max(len(prompt_ids[i]) for i in rows))
        tokens = np.full((batch_size, P), pad_id, np.int32)
        mask = np.zeros((batch_size, P), bool)
        for r, i in enumerate(rows):
            ids = prompt_ids[i]
            tokens[r, P - len(ids):] = ids
            mask[r, P - len(ids):] = True
        key, sub = jax.random.split(key)
        generated, lengths = _generate_jit(
            graphdef, state, layers, jnp.asarray(tokens), jnp.asarray(mask), sub,
            jnp.float32(temperature), jnp.float32(top_p), max_new_tokens=max_new_tokens,
            eos_ids=eos, greedy=temperature == 0.0)
        generated, lengths = np.asarray(generated), np.asarray(lengths)
        chex.assert_shape(generated, (batch_size, max_new_tokens))
        for r, i in enumerate(rows):
            ids = generated[r, :lengths[r]].tolist()  # up to and including EOS
            results[i] = ids[:-1] if ids and ids[-1] in eos else ids
    return results


def generate(model: Decoder, tokenizer: Any, prompts: Sequence[str], *,
             max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, prefix: str | None = None, prefix_mode: str = "assistant",
             system: str | None = None, batch_size: int = 16) -> list[str]:
    """Chat completions for user prompts; with an assistant-mode prefix, the returned
    answer starts with that prefix (the model continued it)."""
    texts = [render_prompt(tokenizer, p, prefix=prefix, prefix_mode=prefix_mode, system=system)
             for p in prompts]
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = set(model.config.eos_ids)
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    new_ids = generate_ids(model, prompt_ids, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, key=jax.random.key(seed),
                           eos_ids=sorted(eos), pad_id=pad_id, batch_size=batch_size)
    head = answer_prefix(prefix, prefix_mode)
    return [head + tokenizer.decode(ids, skip_special_tokens=True) for ids in new_ids]
