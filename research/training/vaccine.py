"""Vaccine: perturbation-aware alignment (gradient-ascent noise on attention outputs).

Per step: pass 1 takes the gradient of the alignment loss with respect to the site
activations of every layer (the gradient of a zero delta at `attn_out`); one global L2
norm over layers, tokens and batch gives eps = rho * g / (||g|| + 1e-7), the direction
that hurts the loss most. Pass 2 adds eps at the site and takes the parameter gradient
of the perturbed loss; only that gradient updates the weights, so the model learns
representations whose loss is robust to the drift a later harmful fine-tune causes.

Accumulation: eps is computed **per batch**, as in the paper. Pass 1 runs over the
microbatches (a scan), the norm is taken over the whole batch, and pass 2 runs over the
microbatches again, each taking its rows of eps. So A microbatches of B/A give exactly
the update of one batch of B; the price is one site-sized buffer `[B, L, T, D]` for the
full batch (one activation per layer, small next to the backward pass's activations).

Accelerated variant (tau > 1): the step state (`VaccineState`) stores one perturbation
per batch shape `(B, T)` (a length bucket at the stage's batch size), each
`[B, L, T, D]` float32 with its own age, in a fixed number of slots (`eps_slots`,
default 8, the number of default length buckets). A batch uses its shape's eps and
ages it by one; the eps is recomputed, under `lax.cond`, on the step that finds it
`tau` steps old (or never computed), so with shuffled buckets pass 1 runs about once
per `tau` steps of each shape, and one compiled program per shape serves both kinds
of step. eps is applied position by position to later batches of its shape. The
price is one site-sized buffer per shape in use, held between steps. More shapes than
slots evict the least recently used one, which is recomputed when its
shape comes back. Resume: the slots are part of the checkpointed state; a fresh
state's empty placeholders take their saved shapes on restore.

Precision: the decoder adds eps, and the residual add that follows the site, in
float32 (or wider) and then rounds to the compute dtype (`Decoder.__call__`); eps's
elements (rho spread over B * L * T * D) are far below bfloat16's spacing near the
activations, so a bfloat16 add would round them away.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from research.models.transformer import SITES
from research.training.losses import (BATCH_KEYS, Batch, check_batch, response_weights,
                                      sft_loss_sum)
from research.training.state import TrainState
from research.training.steps import GradFn, make_train_step, split_microbatches

NORM_EPS = 1e-7
EPS_KEY = "vaccine_eps"  # batch entry carrying the perturbation, batch axis first
EPS_SLOTS = 8  # accelerated Vaccine's stored perturbations: one per batch shape in use
Step = Callable[[Any, nnx.State, Batch], tuple[Any, dict[str, jax.Array]]]


def check_options(rho: float, site: str, tau: int = 1) -> None:
    """Reject bad options where they enter, naming the option."""
    if site not in SITES:
        raise ValueError(f"Vaccine site must be one of {SITES}, got {site!r}")
    if not rho >= 0:
        raise ValueError(f"Vaccine rho must be >= 0, got {rho}")
    if tau < 1:
        raise ValueError(f"Vaccine tau must be >= 1, got {tau}")


def perturbation(grad: jax.Array, rho: float) -> jax.Array:
    """eps = rho * g / (||g|| + 1e-7), one L2 norm over every axis of `grad`."""
    norm = jnp.sqrt(jnp.sum(jnp.square(grad.astype(jnp.float32))))
    return (rho * grad / (norm + NORM_EPS)).astype(grad.dtype)


def site_gradient(params: nnx.State, frozen: nnx.State, graphdef: nnx.GraphDef, batch: Batch,
                  *, site: str, remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """Pass 1 on one (micro)batch: dL_sum/d(site) batch-first `[B, L, T, D]`, and L_sum.

    The gradient of the summed loss has the direction of the mean loss's gradient, and
    the direction is all that eps keeps, so microbatches need no rescaling.
    """
    model = nnx.merge(graphdef, params, frozen)
    cfg, dtype = model.config, jnp.promote_types(model.compute_dtype, jnp.float32)
    rows, length = batch["tokens"].shape
    zeros = jnp.zeros((cfg.num_layers, rows, length, cfg.hidden_size), dtype)

    def loss_at(delta: jax.Array) -> jax.Array:
        return sft_loss_sum(params, frozen, graphdef, batch, deltas={site: delta},
                            remat=remat)[0]

    loss_sum, grad = jax.value_and_grad(loss_at)(zeros)
    return jnp.moveaxis(grad, 1, 0), loss_sum


def batch_perturbation(params: nnx.State, frozen: nnx.State, graphdef: nnx.GraphDef,
                       batch: Batch, *, rho: float, site: str = "attn_out",
                       accum_steps: int = 1, remat: bool = False
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """eps `[B, L, T, D]` for the whole batch (one norm), pass 1 scanned over microbatches.

    Returns eps (rows in the batch's order) and `clean_loss_sum`, `site_grad_norm`.
    """
    core = {k: batch[k] for k in (*BATCH_KEYS, "loss_rows") if k in batch}
    if accum_steps == 1:
        grad, loss_sum = site_gradient(params, frozen, graphdef, core, site=site, remat=remat)
    else:
        def body(carry, microbatch):
            g, l = site_gradient(params, frozen, graphdef, microbatch, site=site, remat=remat)
            return carry + l, g
        loss_sum, grads = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                                       split_microbatches(core, accum_steps))
        # [A, B/A, ...] -> [B, ...]: undo split_microbatches' strided row order
        grad = grads.swapaxes(0, 1).reshape(-1, *grads.shape[2:])
    chex.assert_shape(grad, (core["tokens"].shape[0], None, core["tokens"].shape[1], None))
    norm = jnp.sqrt(jnp.sum(jnp.square(grad)))
    eps = jax.lax.stop_gradient(perturbation(grad, rho))
    return eps, {"clean_loss_sum": loss_sum, "site_grad_norm": norm}


def perturbed_grad_fn(graphdef: nnx.GraphDef, *, site: str = "attn_out",
                      remat: bool = False) -> GradFn:
    """Pass 2 as a microbatch grad_fn: parameter gradient with the batch's eps at `site`.

    Pass 2 runs under `lax.cond` on eps being finite, a fence that keeps XLA from
    allocating pass 2's saved activations before pass 1 has finished. A non-finite eps
    gives a NaN loss and zero gradient, so the loop's non-finite guard stops the run.
    """
    def grad_fn(params, frozen, microbatch, key):
        del key  # deterministic
        eps = jnp.moveaxis(microbatch[EPS_KEY], 0, 1)  # [B, L, T, D] -> [L, B, T, D]
        core = {k: v for k, v in microbatch.items() if k != EPS_KEY}

        def perturbed():
            (loss_sum, aux), grads = jax.value_and_grad(sft_loss_sum, has_aux=True)(
                params, frozen, graphdef, core, deltas={site: eps}, remat=remat)
            return grads, {"loss_sum": loss_sum, "tokens": aux["tokens"]}

        def non_finite():
            grads = jax.tree.map(jnp.zeros_like, params)
            return grads, {"loss_sum": jnp.asarray(jnp.nan, jnp.float32),
                           "tokens": jnp.sum(response_weights(core))}

        return jax.lax.cond(jnp.isfinite(jnp.sum(eps)), perturbed, non_finite)
    return grad_fn


def _with_eps_metrics(metrics: dict, eps: jax.Array, stats: dict) -> dict:
    """Add clean (unperturbed) loss and the perturbation's norms to the step metrics."""
    count = jnp.maximum(metrics["loss_tokens"], 1.0)
    return dict(metrics, clean_loss=stats["clean_loss_sum"] / count,
                site_grad_norm=stats["site_grad_norm"],
                eps_norm=jnp.sqrt(jnp.sum(jnp.square(eps.astype(jnp.float32)))))


def make_vaccine_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *,
                      rho: float = 2.0, site: str = "attn_out", accum_steps: int = 1,
                      clip_norm: float | None = 1.0, schedule: optax.Schedule | None = None,
                      remat: bool = False, state_shardings: Any = None,
                      donate: bool = True) -> Step:
    """The jitted `vaccine_step(state, frozen, batch) -> (state, metrics)`.

    Same state, accumulation, clipping, sharding and metrics as `make_sft_step`; `loss`
    is the perturbed loss that is optimised, `clean_loss` the unperturbed one.
    """
    check_options(rho, site)
    update = make_train_step(perturbed_grad_fn(graphdef, site=site, remat=remat), optimizer,
                             accum_steps=accum_steps, clip_norm=clip_norm, schedule=schedule,
                             donate=False)

    def vaccine_step(state: TrainState, frozen: nnx.State, batch: Batch):
        check_batch(batch)
        eps, stats = batch_perturbation(state.params, frozen, graphdef, batch, rho=rho,
                                        site=site, accum_steps=accum_steps, remat=remat)
        new_state, metrics = update(state, frozen, dict(batch, **{EPS_KEY: eps}))
        return new_state, _with_eps_metrics(metrics, eps, stats)

    out_shardings = None if state_shardings is None else (state_shardings, None)
    return jax.jit(vaccine_step, donate_argnums=(0,) if donate else (),
                   out_shardings=out_shardings)


class Perturbation(NamedTuple):
    """One stored perturbation of accelerated Vaccine: the eps of one batch shape."""

    eps: jax.Array       # [B, L, T, D] float32, batch-first; (B, T) is its batch shape
    age: jax.Array       # int32 scalar: steps of that shape it has served since computed


class VaccineState(NamedTuple):
    """TrainState's fields plus the stored perturbations (accelerated Vaccine).

    `perturbations` is a fixed number of slots, most recently used first; each is the
    eps of one batch shape (its array's shape is its key) with its own age. How a batch
    finds or takes its slot: `prepare_vaccine_state`.
    """

    step: jax.Array      # int32 scalar
    params: nnx.State
    opt_state: Any
    rng: jax.Array
    perturbations: tuple[Perturbation, ...]

    @property
    def eps(self) -> jax.Array:
        """The most recently used perturbation `[B, L, T, D]`."""
        return self.perturbations[0].eps

    @property
    def eps_age(self) -> jax.Array:
        """The age of the most recently used perturbation."""
        return self.perturbations[0].age

    def train_state(self) -> TrainState:
        return TrainState(self.step, self.params, self.opt_state, self.rng)


def _stale(shape: tuple[int, ...], tau: int) -> Perturbation:
    """A zero eps of `shape` that the next step using it recomputes (age tau)."""
    return Perturbation(jnp.zeros(shape, jnp.float32), jnp.asarray(tau, jnp.int32))


def _with_slots(state: TrainState, tau: int, eps_slots: int) -> VaccineState:
    if eps_slots < 1:
        raise ValueError(f"Vaccine eps_slots must be >= 1, got {eps_slots}")
    return VaccineState(*state, perturbations=(_stale((0, 0, 0, 0), tau),) * eps_slots)


def vaccine_initial_state(state: TrainState, tau: int, eps_slots: int = EPS_SLOTS
                          ) -> TrainState | VaccineState:
    """The state a Vaccine step starts from: `state` itself for the plain step (tau 1);
    for the accelerated one a VaccineState of `eps_slots` empty, stale placeholders.

    Their shapes come from the batches (`prepare_vaccine_state`) or, on resume, from
    the checkpoint, whose restore fills empty template leaves with the saved shapes.
    """
    return state if tau <= 1 else _with_slots(state, tau, eps_slots)


def prepare_vaccine_state(state: TrainState | VaccineState, frozen: nnx.State,
                          graphdef: nnx.GraphDef, batch: Batch, tau: int,
                          eps_slots: int = EPS_SLOTS) -> VaccineState:
    """The state with the slot of `batch`'s shape `(B, T)` first.

    A hit moves that slot, eps and age untouched, to the front. A miss replaces the last
    slot (a vacant one while any is left, since used slots are kept most recently used
    first; else the least recently used) by a stale zero eps of the batch's shape, so
    the step recomputes it. Empty placeholders (a fresh state's) first become stale
    `[1, L, 1, D]` zeros, since a checkpoint cannot hold empty arrays: such a slot is just
    the never-computed eps of a 1 x 1 batch. A TrainState (first step) gets `eps_slots`
    slots. Runs outside jit and reads only shapes, so it never waits on the device.
    """
    if not isinstance(state, VaccineState):
        state = _with_slots(state, tau, eps_slots)
    rows, length = batch["tokens"].shape
    slots = list(state.perturbations)
    hits = [i for i, p in enumerate(slots) if (p.eps.shape[0], p.eps.shape[2]) == (rows, length)]
    if hits:
        slots.insert(0, slots.pop(hits[0]))
        return state._replace(perturbations=tuple(slots))
    cfg = nnx.merge(graphdef, state.params, frozen).config
    layers, width = cfg.num_layers, cfg.hidden_size
    slots = [_stale((1, layers, 1, width), tau) if p.eps.size == 0 else p for p in slots]
    slots = [_stale((rows, layers, length, width), tau), *slots[:-1]]
    return state._replace(perturbations=tuple(slots))


def make_accelerated_vaccine_step(graphdef: nnx.GraphDef,
                                  optimizer: optax.GradientTransformation, *,
                                  rho: float = 2.0, tau: int = 100, site: str = "attn_out",
                                  accum_steps: int = 1, clip_norm: float | None = 1.0,
                                  schedule: optax.Schedule | None = None,
                                  remat: bool = False, eps_slots: int = EPS_SLOTS,
                                  donate: bool = True) -> Step:
    """`step(state, frozen, batch)`: the batch's eps is recomputed once it has served
    `tau` steps of the batch's shape (`prepare_vaccine_state` picks the slot).

    Metrics add `eps_recomputed` (1.0 on the steps that ran pass 1) and `eps_norm`;
    the clean loss is not reported, since reuse steps do not compute it. The jitted
    core `.jitted(TrainState, Perturbation, frozen, batch) -> (TrainState, Perturbation,
    metrics)` sees only the batch's slot, so it compiles once per batch shape whatever
    the other slots hold; `.lower(state, frozen, batch)` lowers it for a batch.
    """
    check_options(rho, site, tau)
    if eps_slots < 1:
        raise ValueError(f"Vaccine eps_slots must be >= 1, got {eps_slots}")
    update = make_train_step(perturbed_grad_fn(graphdef, site=site, remat=remat), optimizer,
                             accum_steps=accum_steps, clip_norm=clip_norm, schedule=schedule,
                             donate=False)

    def step(train: TrainState, slot: Perturbation, frozen: nnx.State, batch: Batch):
        check_batch(batch)
        chex.assert_shape(slot.eps, (batch["tokens"].shape[0], None,
                                     batch["tokens"].shape[1], None))
        stale = slot.age >= tau

        def fresh():
            return batch_perturbation(train.params, frozen, graphdef, batch, rho=rho,
                                      site=site, accum_steps=accum_steps,
                                      remat=remat)[0].astype(slot.eps.dtype)

        eps = jax.lax.cond(stale, fresh, lambda: slot.eps)
        new_train, metrics = update(train, frozen, dict(batch, **{EPS_KEY: eps}))
        age = jnp.where(stale, 0, slot.age) + 1
        metrics = dict(metrics, eps_recomputed=stale.astype(jnp.float32),
                       eps_norm=jnp.sqrt(jnp.sum(jnp.square(eps))))
        return new_train, Perturbation(eps, age), metrics

    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())

    def arguments(state, frozen, batch) -> tuple[VaccineState, tuple]:
        state = prepare_vaccine_state(state, frozen, graphdef, batch, tau, eps_slots)
        return state, (state.train_state(), state.perturbations[0], frozen, batch)

    def accelerated_vaccine_step(state, frozen, batch):
        """Accepts a TrainState (first step) or a VaccineState."""
        state, args = arguments(state, frozen, batch)
        train, slot, metrics = jitted(*args)
        return VaccineState(*train, perturbations=(slot, *state.perturbations[1:])), metrics

    accelerated_vaccine_step.jitted = jitted  # for compile counts / memory analysis
    accelerated_vaccine_step.lower = lambda *a: jitted.lower(*arguments(*a)[1])
    return accelerated_vaccine_step


def vaccine_step_builder(ctx: Any) -> Step:
    """Alignment method `vaccine` for the study's stage 1 (method.rho, .site, .tau,
    .eps_slots)."""
    method = ctx.method
    rho, site = float(method.get("rho", 2.0)), str(method.get("site", "attn_out"))
    tau, remat = int(method.get("tau", 1)), bool(method.get("remat", False))
    common = dict(rho=rho, site=site, accum_steps=ctx.accum_steps, clip_norm=ctx.clip_norm,
                  schedule=ctx.schedule, remat=remat)
    if tau > 1:
        return make_accelerated_vaccine_step(
            ctx.graphdef, ctx.optimizer, tau=tau,
            eps_slots=int(method.get("eps_slots", EPS_SLOTS)), **common)
    return make_vaccine_step(ctx.graphdef, ctx.optimizer, **common)
