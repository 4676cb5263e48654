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
