"""Parameter EMA against a hand computation, in both modes, composed with optimisers;
pull mode is not a learning-rate change."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research.training.ema import ema_params, parameter_ema
from research.training.optim import make_optimizer

BETA, LR = 0.8, 0.5
GRADS = [np.array([1.0, -2.0]), np.array([0.5, 0.5]), np.array([-1.0, 3.0])]
THETA0 = np.array([2.0, 1.0])


def _run(mode: str, optimizer: optax.GradientTransformation, **pull):
    opt = optax.chain(optimizer, parameter_ema(BETA, mode, **pull))
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


# a tiny tree, and gradients for it, for the exact pull-mode equations
TREE0 = {"a": np.array([1.0, -2.0]), "b": {"c": np.array([[0.5, 3.0], [-1.0, 0.0]])}}
TREE_GRADS = [jax.tree.map(lambda x, i=i: np.cos(np.arange(x.size) + 3.0 * i).reshape(x.shape),
                           TREE0) for i in range(7)]


@pytest.mark.parametrize("pull,every", [(0.5, 1), (0.3, 1), (1.0, 2), (0.7, 3)])
def test_pull_mode_matches_its_equations_on_a_tree(pull, every):
    """phi'_t = phi_{t-1} + u_t; avg_t = beta avg_{t-1} + (1 - beta) phi'_t;
    phi_t = phi'_t + a_t (avg_t - phi'_t), a_t = pull on every `every`-th step, else 0."""
    opt = optax.chain(optax.sgd(LR), parameter_ema(BETA, "pull", pull=pull, pull_every=every))
    params = jax.tree.map(jnp.asarray, TREE0)
    state = opt.init(params)
    phi = jax.tree.map(np.copy, TREE0)
    avg = jax.tree.map(np.copy, TREE0)
    for t, g in enumerate(TREE_GRADS, start=1):
        updates, state = opt.update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
        a = pull if t % every == 0 else 0.0
        proposed = jax.tree.map(lambda p, gg: p - LR * gg, phi, g)
        avg = jax.tree.map(lambda m, p: BETA * m + (1 - BETA) * p, avg, proposed)
        phi = jax.tree.map(lambda p, m: p + a * (m - p), proposed, avg)
        jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5,
                                                                  atol=1e-6), params, phi)
        jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5,
                                                                  atol=1e-6),
                     ema_params(state), avg)
    assert int(state[1].count) == len(TREE_GRADS)


def test_pull_every_step_is_the_documented_momentum_recurrence():
    """k = 1: w_t = mu w_{t-1} + u_t, avg_t = avg_{t-1} + (1 - beta) w_t,
    phi_t = avg_t + mu w_t, with mu = (1 - pull) beta."""
    pull = 0.4
    mu = (1 - pull) * BETA
    got = _run("pull", optax.sgd(LR), pull=pull)
    avg, w = THETA0.copy(), np.zeros(2)
    for (got_phi, got_avg), g in zip(got, GRADS):
        w = mu * w - LR * g
        avg = avg + (1 - BETA) * w
        np.testing.assert_allclose(got_avg, avg, rtol=1e-6)
        np.testing.assert_allclose(got_phi, avg + mu * w, rtol=1e-6)
        # the gap bound: at most mu / (1 - mu) times the largest update
        assert np.abs(got_phi - got_avg).max() <= mu / (1 - mu) * LR * np.abs(GRADS).max()


def _quadratic(mode_kwargs: dict | None, lr: float, steps: int, curvature=(1.0, 4.0)):
    """SGD on f(x) = sum(h x^2) / 2 from x = 1: the fast weights and (with an EMA) the
    average after each step."""
    h = jnp.asarray(curvature)
    opt = optax.sgd(lr)
    if mode_kwargs is not None:
        opt = optax.chain(opt, parameter_ema(**mode_kwargs))
    x = jnp.ones(len(curvature))
    state = opt.init(x)
    fast, slow = [], []
    for _ in range(steps):
        updates, state = opt.update(h * x, state, x)
        x = optax.apply_updates(x, updates)
        fast.append(np.asarray(x))
        slow.append(np.asarray(ema_params(state)) if mode_kwargs is not None else None)
    return np.stack(fast), (np.stack(slow) if mode_kwargs is not None else None)


@pytest.mark.parametrize("pull,every", [(0.5, 1), (1.0, 3)])
def test_pull_mode_is_not_a_learning_rate_change(pull, every):
    """On a quadratic, plain SGD at any learning rate c * lr contracts each coordinate by
    the same factor every step; neither the pull-mode average nor its fast weights do,
    and no c on a fine grid comes close to the average's trajectory."""
    lr, steps = 0.1, 12
    fast, slow = _quadratic(dict(beta=0.9, mode="pull", pull=pull, pull_every=every),
                            lr, steps)
    for traj in (fast, slow):
        ratios = traj[1:, 0] / traj[:-1, 0]
        assert np.ptp(ratios) > 1e-3  # not geometric: no fixed-lr SGD trajectory
    best = min(np.abs(_quadratic(None, c * lr, steps)[0] - slow).max()
               for c in np.linspace(0.0, 1.5, 1501))
    assert best > 1e-2


def test_pull_one_every_step_is_rejected_as_a_learning_rate_change():
    with pytest.raises(ValueError, match="learning rate"):
        parameter_ema(0.9, "pull", pull=1.0, pull_every=1)


def test_modes_differ_and_compose_with_adamw():
    track = _run("track", optax.adamw(0.1, weight_decay=0.01))
    pull = _run("pull", optax.adamw(0.1, weight_decay=0.01))
    assert not np.allclose(track[-1][0], pull[-1][0])
    assert not np.allclose(track[-1][1], pull[-1][1])


def test_pull_mode_keeps_the_params_dtype():
    opt = optax.chain(optax.sgd(LR), parameter_ema(BETA, "pull"))
    params = {"w": jnp.asarray(THETA0, jnp.bfloat16)}
    state = opt.init(params)
    updates, state = opt.update({"w": jnp.ones(2, jnp.bfloat16)}, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    assert ema_params(state)["w"].dtype == jnp.float32


def test_accessor_and_validation():
    with pytest.raises(ValueError, match="no parameter EMA"):
        ema_params(optax.sgd(1.0).init({"w": jnp.zeros(2)}))
    with pytest.raises(ValueError, match="beta"):
        parameter_ema(1.0)
    with pytest.raises(ValueError, match="mode"):
        parameter_ema(0.9, "average")
    with pytest.raises(ValueError, match="pull factor"):
        parameter_ema(0.9, "pull", pull=0.0)
    with pytest.raises(ValueError, match="pull_every"):
        parameter_ema(0.9, "pull", pull_every=0)
    parameter_ema(0.9, "track", pull=1.0, pull_every=1)  # pull settings: pull mode only


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_configured_sgd_with_pull_ema_matches_hand_computation(momentum):
    """The config path (`make_optimizer`: SGD, constant lr, EMA in pull mode with a
    factor and period) runs the same math as the equations, with heavy-ball momentum."""
    pull, every = 0.6, 2
    cfg = ml_collections.ConfigDict(dict(name="sgd", lr=LR, schedule="constant",
                                         warmup_steps=0, total_steps=len(GRADS),
                                         momentum=momentum, ema_beta=BETA, ema_mode="pull",
                                         ema_pull=pull, ema_pull_every=every))
    opt = make_optimizer(cfg)
    params = {"w": jnp.asarray(THETA0)}
    state = opt.init(params)
    phi, avg, velocity = THETA0.copy(), THETA0.copy(), np.zeros(2)
    for t, g in enumerate(GRADS, start=1):
        updates, state = opt.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        velocity = momentum * velocity + g
        proposed = phi - LR * velocity
        avg = BETA * avg + (1 - BETA) * proposed
        phi = proposed + (pull if t % every == 0 else 0.0) * (avg - proposed)
        np.testing.assert_allclose(np.asarray(params["w"]), phi, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(ema_params(state)["w"]), avg, rtol=1e-6, atol=1e-6)
