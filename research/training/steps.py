"""Pure, jitted training steps built from one shared accumulate -> clip -> update path.

A method plugs in as a *microbatch gradient function*
    grad_fn(params, frozen, microbatch, key) -> (grads_sum, stats)
returning the gradient of a loss **sum** and `stats` holding at least `loss_sum` and
`tokens` (sums too; any further stats are token-weighted sums as well and are reported
divided by the token count). The step scans it over microbatches, adds everything up, divides
once by the batch's total token count (so accumulation A x B/A equals batch B exactly),
clips by global norm and applies the optax update. `sft_grad_fn` is the SFT instance;
Vaccine supplies a two-pass one, and a method that carries state between steps builds
its own step from `accumulate_gradients` and `apply_gradients`.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from research.training.losses import Batch, check_batch, sft_loss_sum
from research.training.state import TrainState

Stats = dict[str, jax.Array]
GradFn = Callable[[nnx.State, nnx.State, Batch, jax.Array], tuple[Any, Stats]]
Metrics = dict[str, jax.Array]


def sft_grad_fn(graphdef: nnx.GraphDef, *, lora_enabled: bool = True,
                remat: bool = False) -> GradFn:
    """Microbatch gradient of the summed response-only cross-entropy."""
    def grad_fn(params, frozen, microbatch, key):
        del key  # the SFT loss is deterministic
        (loss_sum, aux), grads = jax.value_and_grad(sft_loss_sum, has_aux=True)(
            params, frozen, graphdef, microbatch, lora_enabled=lora_enabled, remat=remat)
        return grads, {"loss_sum": loss_sum, "tokens": aux["tokens"]}
    return grad_fn


def split_microbatches(batch: Batch, accum_steps: int) -> Batch:
    """`[B, ...]` -> `[A, B/A, ...]`; microbatch a takes rows a, a+A, a+2A, ...

    Strided rows keep each microbatch spread over all data shards (no resharding when
    the batch dimension is sharded contiguously).
    """
    def split(x):
        rows = x.shape[0]
        if rows % accum_steps:
            raise ValueError(f"batch size {rows} is not divisible by accum_steps {accum_steps}")
        return x.reshape(rows // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
    return jax.tree.map(split, batch)


def accumulate_gradients(grad_fn: GradFn, params: nnx.State, frozen: nnx.State,
                         batch: Batch, key: jax.Array, accum_steps: int) -> tuple[Any, Stats]:
    """Sum `grad_fn` gradients and stats over `accum_steps` microbatches (lax.scan)."""
    if accum_steps == 1:
        return grad_fn(params, frozen, batch, key)
    micro = split_microbatches(batch, accum_steps)
    keys = jax.random.split(key, accum_steps)
    grads0, stats0 = jax.eval_shape(
        grad_fn, params, frozen, jax.tree.map(lambda x: x[0], micro), keys[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads0, stats0))

    def body(carry, xs):
        microbatch, k = xs
        out = grad_fn(params, frozen, microbatch, k)
        return jax.tree.map(jnp.add, carry, out), None

    (grads, stats), _ = jax.lax.scan(body, zeros, (micro, keys))
    return grads, stats


def clip_by_global_norm(grads: Any, max_norm: float | None,
                        grad_scale: jax.Array | None = None) -> tuple[Any, jax.Array]:
    """Scale gradients so their global L2 norm is at most `max_norm`; return the raw norm.

    `grad_scale` (a scalar) is applied first, folded into the one clipping multiply: the
    step passes summed gradients and 1/token count, so the mean gradient is never
    materialised as a separate array (a full pass over the parameters' size).
    """
    norm = optax.tree.norm(grads)
    factor = None
    if grad_scale is not None:
        norm = norm * grad_scale
        factor = grad_scale
    if max_norm is not None and max_norm > 0:
        clip = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
        factor = clip if factor is None else factor * clip
    if factor is None:
        return grads, norm
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads), norm


def apply_gradients(state: TrainState, grads: Any, optimizer: optax.GradientTransformation,
                    clip_norm: float | None, rng: jax.Array,
                    grad_scale: jax.Array | None = None) -> tuple[TrainState, jax.Array]:
    """Clip, run the optimiser, apply the update; returns the new state and the grad norm
    (of `grads * grad_scale`, before clipping)."""
    grads, grad_norm = clip_by_global_norm(grads, clip_norm, grad_scale)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, opt_state, rng), grad_norm


def make_train_step(
    grad_fn: GradFn,
    optimizer: optax.GradientTransformation,
    *,
    accum_steps: int = 1,
    clip_norm: float | None = 1.0,
    schedule: optax.Schedule | None = None,
    state_shardings: Any = None,
    donate: bool = True,
) -> Callable[[TrainState, nnx.State, Batch], tuple[TrainState, Metrics]]:
    """A jitted `step(state, frozen, batch) -> (state, metrics)` for any `grad_fn`.

    metrics: loss (mean over response tokens), loss_tokens, tokens (real tokens seen),
    grad_norm (before clipping), finite (loss and gradient norm are finite), lr.
    """
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")

    def step(state: TrainState, frozen: nnx.State, batch: Batch):
        check_batch(batch)
        chex.assert_shape(state.rng, (2,))
        rng, key = jax.random.split(jax.random.wrap_key_data(state.rng))
        grads_sum, stats = accumulate_gradients(grad_fn, state.params, frozen, batch, key,
                                                accum_steps)
        count = jnp.maximum(stats["tokens"], 1.0)
        new_state, grad_norm = apply_gradients(state, grads_sum, optimizer, clip_norm,
                                               jax.random.key_data(rng), grad_scale=1.0 / count)
        loss = stats["loss_sum"] / count
        metrics = {
            "loss": loss,
            "loss_tokens": stats["tokens"],
            "tokens": jnp.sum(batch["attention_mask"].astype(jnp.float32)),
            "grad_norm": grad_norm,
            "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
            "lr": (jnp.asarray(schedule(state.step), jnp.float32) if schedule is not None
                   else jnp.asarray(jnp.nan, jnp.float32)),
        }
        metrics.update({k: v / count for k, v in stats.items() if k not in ("loss_sum", "tokens")})
        return new_state, metrics

    out_shardings = None if state_shardings is None else (state_shardings, None)
    return jax.jit(step, donate_argnums=(0,) if donate else (),
                   out_shardings=out_shardings)


def make_sft_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *,
                  accum_steps: int = 1, clip_norm: float | None = 1.0,
                  schedule: optax.Schedule | None = None, lora_enabled: bool = True,
                  remat: bool = False, state_shardings: Any = None, donate: bool = True):
    """The jitted SFT step (response-only loss, accumulation, clipping, optax update)."""
    return make_train_step(sft_grad_fn(graphdef, lora_enabled=lora_enabled, remat=remat),
                           optimizer, accum_steps=accum_steps, clip_norm=clip_norm,
                           schedule=schedule, state_shardings=state_shardings, donate=donate)
