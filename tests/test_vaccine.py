"""Vaccine step: rho = 0 is SFT, the perturbation has norm rho, and the update is the
gradient of the loss with the perturbation added at the site."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.training.losses import sft_loss_sum
from research.training.state import split_model
from research.training.steps import make_train_step, sft_grad_fn
from research.training.vaccine import perturbation, vaccine_grad_fn
from tests.test_training_fixtures import TINY, make_batch, tiny_model


def _one_step(grad_fn, graphdef, params, frozen, batch):
    from research.training.state import init_train_state

    optimizer = optax.sgd(0.1)
    state = init_train_state(params, optimizer, seed=0)
    step = make_train_step(grad_fn, optimizer, clip_norm=None, donate=False)
    new_state, metrics = step(state, frozen, batch)
    return new_state.params, metrics


def test_rho_zero_gives_exactly_the_sft_update():
    graphdef, params, frozen = split_model(tiny_model(lora=False), "full")
    batch = {k: jnp.asarray(v) for k, v in make_batch(rows=4, length=12).items()}
    sft, m_sft = _one_step(sft_grad_fn(graphdef), graphdef, params, frozen, batch)
    vac, m_vac = _one_step(vaccine_grad_fn(graphdef, rho=0.0), graphdef, params, frozen, batch)
    for a, b in zip(jax.tree.leaves(sft), jax.tree.leaves(vac)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(m_sft["loss"]) == float(m_vac["loss"])


def test_perturbation_global_norm_equals_rho():
    g = jax.random.normal(jax.random.key(0), (TINY.num_layers, 4, 12, TINY.hidden_size))
    for rho in (0.01, 2.0, 10.0):
        eps = perturbation(g, rho)
        assert abs(float(jnp.linalg.norm(eps.ravel())) - rho) < 1e-4 * max(1.0, rho)
        cos = jnp.vdot(eps, g) / (jnp.linalg.norm(eps.ravel()) * jnp.linalg.norm(g.ravel()))
        assert float(cos) > 0.9999  # the ascent direction


@pytest.mark.parametrize("site", ["attn_out", "resid_post"])
def test_update_is_the_gradient_of_the_perturbed_loss(site):
    """Pass 2's gradient equals a finite difference of the loss with eps fixed at the site,
    and it differs from the unperturbed (SFT) gradient."""
    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    # live adapters, so every LoRA matrix receives gradient
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape),
                          params)
    batch = {k: jnp.asarray(v) for k, v in make_batch(rows=4, length=12).items()}
    rho = 2.0
    grads, _ = vaccine_grad_fn(graphdef, rho=rho, site=site)(params, frozen, batch, None)
    sft_grads, _ = sft_grad_fn(graphdef)(params, frozen, batch, None)

    shape = (TINY.num_layers, 4, 12, TINY.hidden_size)
    site_grad = jax.grad(lambda d: sft_loss_sum(params, frozen, graphdef, batch,
                                                deltas={site: d})[0])(jnp.zeros(shape))
    eps = perturbation(site_grad, rho)

    def perturbed(p):
        return sft_loss_sum(p, frozen, graphdef, batch, deltas={site: eps})[0]

    direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(2), x.shape), params)
    norm = jnp.sqrt(sum(jnp.sum(d * d) for d in jax.tree.leaves(direction)))
    direction = jax.tree.map(lambda d: d / norm, direction)  # unit step: small truncation
    h = 1e-2
    shift = lambda s: jax.tree.map(lambda p, d: p + s * h * d, params, direction)  # noqa: E731
    fd = (float(perturbed(shift(1.0))) - float(perturbed(shift(-1.0)))) / (2 * h)
    analytic = sum(float(jnp.vdot(g, d)) for g, d in
                   zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    assert abs(analytic - fd) <= 1e-2 * max(0.1, abs(fd))
    diff = max(float(jnp.abs(a - b).max()) for a, b in
               zip(jax.tree.leaves(grads), jax.tree.leaves(sft_grads)))
    assert diff > 1e-4


def test_bad_options_are_named():
    graphdef, _, _ = split_model(tiny_model(lora=False), "full")
    with pytest.raises(ValueError, match="site"):
        vaccine_grad_fn(graphdef, site="mlp_in")
    with pytest.raises(ValueError, match="rho"):
        vaccine_grad_fn(graphdef, rho=-1.0)


def test_vaccine_is_a_registered_alignment_method():
    from research.pipeline.registry import get_method

    assert get_method("vaccine").__name__ == "vaccine_step_builder"


def test_accelerated_variant_with_tau_one_equals_the_plain_one():
    from research.training.state import init_train_state
    from research.training.vaccine import AcceleratedVaccineStep

    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    batches = [{k: jnp.asarray(v) for k, v in make_batch(rows=4, length=12, seed=s).items()}
               for s in range(3)]
    optimizer = optax.adam(1e-2)
    plain = make_train_step(vaccine_grad_fn(graphdef, rho=2.0), optimizer, donate=False)
    fast = AcceleratedVaccineStep(graphdef, optimizer, rho=2.0, tau=1)
    lazy = AcceleratedVaccineStep(graphdef, optimizer, rho=2.0, tau=100)
    # separate states: the accelerated step donates its input state's buffers
    a, b, c = (init_train_state(jax.tree.map(jnp.copy, params), optimizer, seed=0)
               for _ in range(3))
    for batch in batches:
        a, _ = plain(a, frozen, batch)
        b, _ = fast(b, frozen, batch)
        c, _ = lazy(c, frozen, batch)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    assert fast.recomputed == 3 and lazy.recomputed == 1
    gap = max(float(jnp.abs(x - y).max()) for x, y in
              zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))
    assert gap > 1e-6  # reusing a stale eps is a different (cheaper) update
