"""Parameter EMA against a hand computation, in both modes, composed with optimisers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.training.ema import ema_params, parameter_ema

BETA, LR = 0.8, 0.5
GRADS = [np.array([1.0, -2.0]), np.array([0.5, 0.5]), np.array([-1.0, 3.0])]
THETA0 = np.array([2.0, 1.0])


def _run(mode: str, optimizer: optax.GradientTransformation):
    opt = optax.chain(optimizer, parameter_ema(BETA, mode))
    params = {"w": jnp.asarray(THETA0)}
    state = opt.init(params)
    trajectory = []
    for g in GRADS:
        updates, state = opt.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append((np.asarray(params["w"]), np.asarray(ema_params(state)["w"])))
    return trajectory


def test_track_mode_matches_hand_computation():
    theta, avg = THETA0.copy(), THETA0.copy()
    for (got_theta, got_avg), g in zip(_run("track", optax.sgd(LR)), GRADS):
        theta = theta - LR * g                  # weights follow plain SGD
        avg = BETA * avg + (1 - BETA) * theta   # average starts at theta_0
        np.testing.assert_allclose(got_theta, theta, rtol=1e-6)
        np.testing.assert_allclose(got_avg, avg, rtol=1e-6)


def test_pull_mode_writes_the_average_back_into_the_weights():
    theta, avg = THETA0.copy(), THETA0.copy()
    for (got_theta, got_avg), g in zip(_run("pull", optax.sgd(LR)), GRADS):
        proposed = theta - LR * g               # the optimiser's step from current weights
        avg = BETA * avg + (1 - BETA) * proposed
        theta = avg                             # ... then the weights become the average
        np.testing.assert_allclose(got_avg, avg, rtol=1e-6)
        np.testing.assert_allclose(got_theta, theta, rtol=1e-6)


def test_modes_differ_and_compose_with_adamw():
    track = _run("track", optax.adamw(0.1, weight_decay=0.01))
    pull = _run("pull", optax.adamw(0.1, weight_decay=0.01))
    assert not np.allclose(track[-1][0], pull[-1][0])
    np.testing.assert_allclose(pull[-1][0], pull[-1][1], rtol=1e-6)


def test_accessor_and_validation():
    with pytest.raises(ValueError, match="no parameter EMA"):
        ema_params(optax.sgd(1.0).init({"w": jnp.zeros(2)}))
    with pytest.raises(ValueError, match="beta"):
        parameter_ema(1.0)
    with pytest.raises(ValueError, match="mode"):
        parameter_ema(0.9, "average")


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_configured_sgd_with_pull_ema_matches_hand_computation(momentum):
    """The config path (`make_optimizer`: SGD, constant lr, EMA in pull mode) runs the
    same math as the hand-built chain, with heavy-ball momentum when asked."""
    import ml_collections

    from research.training.optim import make_optimizer

    cfg = ml_collections.ConfigDict(dict(name="sgd", lr=LR, schedule="constant",
                                         warmup_steps=0, total_steps=len(GRADS),
                                         momentum=momentum, ema_beta=BETA, ema_mode="pull"))
    opt = make_optimizer(cfg)
    params, state = {"w": jnp.asarray(THETA0)}, None
    state = opt.init(params)
    theta, avg, velocity = THETA0.copy(), THETA0.copy(), np.zeros(2)
    for g in GRADS:
        updates, state = opt.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        velocity = momentum * velocity + g
        avg = BETA * avg + (1 - BETA) * (theta - LR * velocity)
        theta = avg
        np.testing.assert_allclose(np.asarray(params["w"]), theta, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(ema_params(state)["w"]), avg, rtol=1e-6)
