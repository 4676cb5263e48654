"""Vaccine: perturbation-aware alignment (gradient ascent noise on attention outputs).

Per step: pass 1 takes the gradient of the alignment loss with respect to the `attn_out`
activations of every layer (the gradient of a zero delta at that site); one global L2
norm over layers, tokens and batch gives eps = rho * g / (||g|| + 1e-7), the direction
that hurts the loss most. Pass 2 adds eps at the site and takes the parameter gradient
of the perturbed loss; only that gradient updates the weights, so the model learns
representations whose loss is robust to the drift a later harmful fine-tune causes.

With gradient accumulation each microbatch gets its own perturbation (its own pass 1):
the paper has no accumulation, and a per-microbatch eps keeps memory at one microbatch.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from research.models.transformer import SITES
from research.training.losses import sft_loss_sum
from research.training.steps import GradFn

NORM_EPS = 1e-7


def perturbation(grad: jax.Array, rho: float) -> jax.Array:
    """eps = rho * g / (||g|| + 1e-7), one norm over all layers, tokens and the batch."""
    norm = jnp.sqrt(jnp.sum(jnp.square(grad.astype(jnp.float32))))
    return (rho * grad / (norm + NORM_EPS)).astype(grad.dtype)


def vaccine_grad_fn(graphdef: nnx.GraphDef, *, rho: float = 2.0, site: str = "attn_out",
                    remat: bool = False) -> GradFn:
    """Microbatch gradient of the Vaccine objective (pass 1: eps; pass 2: params)."""
    if site not in SITES:
        raise ValueError(f"Vaccine site must be one of {SITES}, got {site!r}")
    if rho < 0:
        raise ValueError(f"Vaccine rho must be >= 0, got {rho}")

    def grad_fn(params, frozen, microbatch, key):
        del key
        model = nnx.merge(graphdef, params, frozen)
        cfg = model.config
        batch, length = microbatch["tokens"].shape
        shape = (cfg.num_layers, batch, length, cfg.hidden_size)

        def loss_at(delta):
            return sft_loss_sum(params, frozen, graphdef, microbatch, deltas={site: delta},
                                remat=remat)[0]

        site_grad = jax.grad(loss_at)(jnp.zeros(shape, jnp.float32))
        eps = jax.lax.stop_gradient(perturbation(site_grad, rho))
        chex.assert_shape(eps, shape)
        (loss_sum, aux), grads = jax.value_and_grad(sft_loss_sum, has_aux=True)(
            params, frozen, graphdef, microbatch, deltas={site: eps}, remat=remat)
        return grads, {"loss_sum": loss_sum, "tokens": aux["tokens"]}

    return grad_fn


EPS_KEY = "vaccine_eps"  # batch entry carrying a fixed perturbation, batch axis first


def site_perturbation(graphdef: nnx.GraphDef, params, frozen, batch, *, rho: float,
                      site: str = "attn_out") -> jax.Array:
    """Pass 1 alone: eps `[L, B, T, D]` for `batch` at the current parameters."""
    model = nnx.merge(graphdef, params, frozen)
    cfg = model.config
    shape = (cfg.num_layers, *batch["tokens"].shape, cfg.hidden_size)
    site_grad = jax.grad(lambda d: sft_loss_sum(params, frozen, graphdef, batch,
                                                deltas={site: d})[0])(jnp.zeros(shape))
    return perturbation(site_grad, rho)


def fixed_perturbation_grad_fn(graphdef: nnx.GraphDef, *, site: str = "attn_out",
                               remat: bool = False) -> GradFn:
    """Pass 2 alone: parameter gradient with the batch's stored eps added at `site`."""
    def grad_fn(params, frozen, microbatch, key):
        del key
        eps = jnp.moveaxis(microbatch[EPS_KEY], 0, 1)  # [B, L, T, D] -> [L, B, T, D]
        core = {k: v for k, v in microbatch.items() if k != EPS_KEY}
        (loss_sum, aux), grads = jax.value_and_grad(sft_loss_sum, has_aux=True)(
            params, frozen, graphdef, core, deltas={site: eps}, remat=remat)
        return grads, {"loss_sum": loss_sum, "tokens": aux["tokens"]}
    return grad_fn


class AcceleratedVaccineStep:
    """Vaccine with eps recomputed every `tau` steps and reused in between.

    The jitted parts are pure (pass 1 and the perturbed update); this thin wrapper only
    remembers the last eps. eps has the batch's shape, so a batch of another shape (a
    new length bucket) recomputes it early; the count of recomputations is kept. eps is
    computed on the whole batch (one norm, as the paper); with accumulation it is stored
    batch-axis first so microbatches take their rows of it.
    """

    def __init__(self, graphdef: nnx.GraphDef, optimizer, *, rho: float = 2.0, tau: int = 100,
                 site: str = "attn_out", clip_norm: float | None = 1.0, schedule=None,
                 remat: bool = False, accum_steps: int = 1):
        from research.training.steps import make_train_step

        if tau < 1:
            raise ValueError(f"Vaccine tau must be >= 1, got {tau}")
        if site not in SITES:
            raise ValueError(f"Vaccine site must be one of {SITES}, got {site!r}")
        self.tau, self.eps, self.since, self.recomputed = tau, None, 0, 0
        self._eps_fn = jax.jit(lambda params, frozen, batch: site_perturbation(
            graphdef, params, frozen, batch, rho=rho, site=site))
        self._update = make_train_step(fixed_perturbation_grad_fn(graphdef, site=site,
                                                                  remat=remat),
                                       optimizer, clip_norm=clip_norm, schedule=schedule,
                                       accum_steps=accum_steps)

    def __call__(self, state, frozen, batch):
        core = {k: batch[k] for k in ("tokens", "attention_mask", "loss_mask")}
        stale = self.eps is None or self.since >= self.tau or \
            self.eps.shape[1:3] != tuple(core["tokens"].shape)
        if stale:
            self.eps, self.since = self._eps_fn(state.params, frozen, core), 0
            self.recomputed += 1
        self.since += 1
        return self._update(state, frozen, dict(core, **{EPS_KEY: jnp.moveaxis(self.eps, 1, 0)}))
