"""Vaccine step: rho = 0 is SFT, the perturbation has global norm rho over the batch,
the update is the gradient of the perturbed loss (finite differences in float64),
accumulation keeps one per-batch eps, and accelerated tau = 1 is the plain step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from research.models.transformer import init_decoder
from research.training.state import init_train_state, split_model
from research.training.steps import make_sft_step
from research.training.vaccine import (VaccineState, batch_perturbation,
                                       make_accelerated_vaccine_step, make_vaccine_step,
                                       perturbation)
from tests.test_training_fixtures import TINY, make_batch, tiny_model


def _batch(rows: int = 4, length: int = 12, seed: int = 0) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in make_batch(rows=rows, length=length,
                                                     seed=seed).items()}


def _live(params, scale: float = 0.05):
    """Non-zero adapters, so every LoRA matrix has gradient and eps matters."""
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    return jax.tree.map(lambda x: x + scale * jax.random.normal(next(keys), x.shape, x.dtype),
                        params)


def _leaves_equal(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("per_layer", [False, True])
def test_rho_zero_gives_the_sft_update(per_layer):
    """Bit-equal on stacked weights. Per-layer (unrolled) programs are fused differently
    by XLA, so there the gradients agree to float32 rounding, checked through an SGD
    update (Adam's first step, g / (|g| + eps), blows rounding up on tiny gradients)."""
    graphdef, params, frozen = split_model(tiny_model(lora=False), "full", per_layer=per_layer)
    batch = _batch()
    opt = optax.sgd(1.0) if per_layer else optax.adamw(1e-2, weight_decay=0.1)
    sft = make_sft_step(graphdef, opt, donate=False)
    vac = make_vaccine_step(graphdef, opt, rho=0.0, donate=False)
    a, m_sft = sft(init_train_state(params, opt, seed=0), frozen, batch)
    b, m_vac = vac(init_train_state(params, opt, seed=0), frozen, batch)
    if per_layer:
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose([float(m_vac["loss"]), float(m_vac["clean_loss"])],
                                   float(m_sft["loss"]), rtol=1e-6)
    else:
        _leaves_equal(a.params, b.params)
        assert float(m_sft["loss"]) == float(m_vac["loss"]) == float(m_vac["clean_loss"])
    assert float(m_vac["eps_norm"]) == 0.0 and float(m_vac["site_grad_norm"]) > 0


def test_perturbation_has_global_norm_rho_over_the_batch():
    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    params, batch = _live(params), _batch(rows=4)
    perturb = jax.jit(lambda rho, site: batch_perturbation(params, frozen, graphdef, batch,
                                                           rho=rho, site=site)[0],
                      static_argnums=1)
    for rho in (0.01, 2.0, 10.0):
        eps = perturb(rho, "attn_out")
        assert eps.shape == (4, TINY.num_layers, 12, TINY.hidden_size)
        assert float(jnp.linalg.norm(eps.ravel())) == pytest.approx(rho, rel=1e-5)
        # one norm over the batch: rows' norms differ, and they are not each rho
        rows = jnp.linalg.norm(eps.reshape(4, -1), axis=1)
        assert float(rows.max() - rows.min()) > 1e-3 and float(rows.max()) < rho
    other = perturb(2.0, "resid_post")
    assert float(jnp.linalg.norm(other.ravel())) == pytest.approx(2.0, rel=1e-5)
    assert float(jnp.abs(other - perturb(2.0, "attn_out")).max()) > 1e-3
    # the direction of the site gradient (ascent), with the norm stats reports
    g = jax.random.normal(jax.random.key(0), (2, 3, 5, 7))
    eps = perturbation(g, 2.0)
    cos = jnp.vdot(eps, g) / (jnp.linalg.norm(eps.ravel()) * jnp.linalg.norm(g.ravel()))
    assert float(cos) == pytest.approx(1.0, abs=1e-6)


def test_accumulation_keeps_one_perturbation_per_batch():
    """A=2 microbatches of 2 rows give the eps and the update of one batch of 4."""
    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    params, batch, opt = _live(params), _batch(rows=4), optax.sgd(0.1)
    perturb = jax.jit(lambda accum: batch_perturbation(params, frozen, graphdef, batch,
                                                       rho=2.0, accum_steps=accum),
                      static_argnums=0)
    (eps1, s1), (eps2, s2) = perturb(1), perturb(2)
    np.testing.assert_allclose(np.asarray(eps1), np.asarray(eps2), atol=1e-6)
    assert float(s1["clean_loss_sum"]) == pytest.approx(float(s2["clean_loss_sum"]), rel=1e-5)
    one = make_vaccine_step(graphdef, opt, clip_norm=None, donate=False)
    two = make_vaccine_step(graphdef, opt, clip_norm=None, accum_steps=2, donate=False)
    a, ma = one(init_train_state(params, opt, seed=0), frozen, batch)
    b, mb = two(init_train_state(params, opt, seed=0), frozen, batch)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-5)


@pytest.fixture
def x64():
    """float64 for finite differences (float32 round-off swamps an h of 1e-7)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def _mean_loss64(params, frozen, graphdef, batch, deltas):
    """Response-only mean cross-entropy, all in float64 (the reference for FD)."""
    model = nnx.merge(graphdef, params, frozen)
    logits = model(batch["tokens"], attention_mask=batch["attention_mask"],
                   deltas=deltas).logits[:, :-1].astype(jnp.float64)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], axis=-1)[..., 0]
    w = (batch["loss_mask"][:, 1:] * batch["attention_mask"][:, 1:]).astype(jnp.float64)
    return jnp.sum(nll * w) / jnp.sum(w)


def test_update_matches_finite_differences_of_the_perturbed_loss(x64):
    """In float64 (h = 1e-7): eps is rho times the site gradient over its global norm,
    that gradient matches FD, and one SGD(lr=1) step moves the parameters by minus the
    FD gradient of the mean loss with eps held fixed at attn_out, along random directions.
    (The project's loss head is float32, so the FD reference is a float64 loss.)"""
    model = init_decoder(TINY, seed=0, compute_dtype=jnp.float64)
    graphdef, params, frozen = split_model(model, "full")
    to64 = lambda t: jax.tree.map(  # noqa: E731
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, t)
    params, frozen = to64(params), to64(frozen)
    batch, rho, h, site = _batch(rows=3, length=10), 2.0, 1e-7, "attn_out"
    shape = (TINY.num_layers, 3, 10, TINY.hidden_size)
    loss = jax.jit(lambda p, delta: _mean_loss64(p, frozen, graphdef, batch, {site: delta}))

    eps = jnp.moveaxis(jax.jit(lambda p: batch_perturbation(
        p, frozen, graphdef, batch, rho=rho, site=site)[0])(params), 0, 1)
    assert eps.dtype == jnp.float64
    g = jax.grad(loss, argnums=1)(params, jnp.zeros(shape, jnp.float64))
    np.testing.assert_allclose(np.asarray(eps), np.asarray(rho * g / jnp.linalg.norm(g.ravel())),
                               rtol=1e-5, atol=1e-9)
    d = jax.random.normal(jax.random.key(3), shape, jnp.float64)
    fd_site = (float(loss(params, h * d)) - float(loss(params, -h * d))) / (2 * h)
    assert float(jnp.vdot(g, d)) == pytest.approx(fd_site, rel=1e-6)

    opt = optax.sgd(1.0)
    step = make_vaccine_step(graphdef, opt, rho=rho, site=site, clip_norm=None, donate=False)
    new, metrics = step(init_train_state(params, opt, seed=0), frozen, batch)
    moved = jax.tree.map(lambda a, b: a - b, params, new.params)  # = mean perturbed grad
    assert float(metrics["loss"]) == pytest.approx(float(loss(params, eps)), rel=1e-6)
    assert float(metrics["loss"]) > float(metrics["clean_loss"])  # ascent direction
    for seed in (4, 5):
        keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params))))
        direction = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype),
                                 params)
        shift = lambda s: jax.tree.map(lambda p, v: p + s * h * v, params, direction)  # noqa
        fd = (float(loss(shift(1.0), eps)) - float(loss(shift(-1.0), eps))) / (2 * h)
        analytic = sum(float(jnp.vdot(m, v)) for m, v in
                       zip(jax.tree.leaves(moved), jax.tree.leaves(direction)))
        assert analytic == pytest.approx(fd, rel=1e-5)


def test_bad_options_are_named():
    graphdef, _, _ = split_model(tiny_model(lora=False), "full")
    opt = optax.sgd(0.1)
    with pytest.raises(ValueError, match="site"):
        make_vaccine_step(graphdef, opt, site="mlp_in")
    with pytest.raises(ValueError, match="rho"):
        make_vaccine_step(graphdef, opt, rho=-1.0)
    with pytest.raises(ValueError, match="tau"):
        make_accelerated_vaccine_step(graphdef, opt, tau=0)


def test_accelerated_variant_with_tau_one_equals_the_plain_one():
    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    batches = [_batch(seed=s) for s in range(3)]
    opt = optax.adam(1e-2)
    plain = make_vaccine_step(graphdef, opt, rho=2.0, donate=False)
    fast = make_accelerated_vaccine_step(graphdef, opt, rho=2.0, tau=1, donate=False)
    lazy = make_accelerated_vaccine_step(graphdef, opt, rho=2.0, tau=100, donate=False)
    a = b = c = init_train_state(params, opt, seed=0)
    recomputed = {"fast": [], "lazy": []}
    for batch in batches:
        a, _ = plain(a, frozen, batch)
        b, mb = fast(b, frozen, batch)
        c, mc = lazy(c, frozen, batch)
        recomputed["fast"].append(float(mb["eps_recomputed"]))
        recomputed["lazy"].append(float(mc["eps_recomputed"]))
    assert isinstance(b, VaccineState) and int(c.eps_age) == 3
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    assert recomputed == {"fast": [1.0] * 3, "lazy": [1.0, 0.0, 0.0]}
    gap = max(float(jnp.abs(x - y).max()) for x, y in
              zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))
    assert gap > 1e-6  # reusing a stale eps is a different (cheaper) update
    # a batch of another shape starts a fresh eps of its own shape
    c, mc = lazy(c, frozen, _batch(rows=4, length=16))
    assert float(mc["eps_recomputed"]) == 1.0 and c.eps.shape[2] == 16
    assert lazy.jitted._cache_size() == 2  # one program per batch shape, as for SFT


@pytest.mark.parametrize("tau", [1, 3])
def test_vaccine_is_the_registered_alignment_method(tau):
    from research.pipeline.registry import StepContext, get_method

    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    opt = optax.adamw(1e-3)
    method = ml_collections.ConfigDict({"rho": 2.0, "site": "attn_out", "tau": tau,
                                        "remat": False})
    step = get_method("vaccine")(StepContext(graphdef, opt, optax.constant_schedule(1e-3),
                                             method))
    state = init_train_state(params, opt, seed=0)
    for s in range(2):
        state, metrics = step(state, frozen, _batch(seed=s))
    assert int(state.step) == 2 and bool(metrics["finite"])
    assert float(metrics["eps_norm"]) == pytest.approx(2.0, rel=1e-5)
    assert float(metrics["loss"]) > float(metrics["clean_loss"]) if tau == 1 else True
    assert isinstance(state, VaccineState) == (tau > 1)
