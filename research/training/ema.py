"""Parameter EMA as an optax transformation (the optimisation-perspective defence).

Notation: phi_t are the trained ("fast") weights, the params the optimiser updates and
takes gradients at; theta_bar_t is the slow average; u_t is the update the optimiser
proposes at step t = 1, 2, ... (computed at phi_{t-1}); phi_0 = theta_bar_0 are the
weights the optimiser starts from (the aligned model), so the average starts anchored
in the aligned basin. Every step forms the proposed weights and updates the average:

    phi'_t       = phi_{t-1} + u_t
    theta_bar_t  = beta * theta_bar_{t-1} + (1 - beta) * phi'_t

Place the transform *last* in `optax.chain(optimizer, parameter_ema(...))`; it needs the
params (`update(updates, state, params)`). The average lives in the optimiser state,
in float32 (`ema_params(opt_state)`); in both modes it is the model to evaluate and
export. The modes differ in the weights training continues from:

- "track": phi_t = phi'_t. The update u_t is passed through unchanged, so the fast
  weights follow the plain optimiser and the average only observes them.
- "pull" (factor `pull` = alpha in (0, 1], period `pull_every` = k >= 1): on every
  k-th step the fast weights are pulled toward the new average,

      phi_t = phi'_t + a_t * (theta_bar_t - phi'_t),   a_t = alpha if t % k == 0 else 0,

  i.e. the emitted update is u_t + a_t * (theta_bar_t - phi'_t). Training thus
  continues from near the anchored average (Lookahead-style, with the slow weights an
  EMA updated every step). With k = 1 the gap d_t = phi_t - theta_bar_t and the
  average follow, exactly,

      w_t = mu * w_{t-1} + u_t  (w_0 = 0),   mu = (1 - alpha) * beta,
      theta_bar_t = theta_bar_{t-1} + (1 - beta) * w_t,   phi_t = theta_bar_t + mu * w_t,

  so the average moves by (1 - beta) times a momentum buffer (coefficient mu) of the
  optimiser's updates, which are taken at the fast weights, a step mu * w_t ahead of
  it; the gap is at most mu / (1 - mu) times the largest update. alpha = 1 with k = 1
  gives mu = 0, theta_bar_t = theta_bar_{t-1} + (1 - beta) * u_t and phi_t =
  theta_bar_t: exactly the plain optimiser with its learning rate (and decoupled weight
  decay) scaled by 1 - beta, so that combination is rejected; every other one keeps a
  memory of past updates (alpha < 1) or lets the fast weights run free between pulls
  (k > 1), and does not reduce to a learning-rate change.
  Defaults: k = 1 (a pull on every step: no phase, so the exported average and the
  gap bound do not depend on where the run stops within a pull cycle) and alpha = 0.5
  (Lookahead's default interpolation factor).

It averages whatever the optimiser trains. Under LoRA that is the factors A and B, so the
exported model uses avg(B) avg(A), which is not the average of the effective weight
updates B A (the product of averages differs by their covariance); full fine-tuning
averages the weights themselves.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

MODES = ("track", "pull")


class ParameterEmaState(NamedTuple):
    """The running average of the parameters (same tree as the params) and the number
    of updates seen."""

    count: jax.Array
    average: Any


def parameter_ema(beta: float, mode: str = "track", *, pull: float = 0.5,
                  pull_every: int = 1) -> optax.GradientTransformation:
    """An optax transform keeping a parameter EMA; `pull`/`pull_every` (alpha, k) apply
    to mode "pull" only. See the module docstring for the equations."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"EMA beta must be in [0, 1), got {beta!r}")
    if mode not in MODES:
        raise ValueError(f"EMA mode must be one of {MODES}, got {mode!r}")
    if mode == "pull":
        if not 0.0 < pull <= 1.0:
            raise ValueError(f"EMA pull factor must be in (0, 1], got {pull!r}")
        if int(pull_every) != pull_every or pull_every < 1:
            raise ValueError(f"EMA pull_every must be an integer >= 1, got {pull_every!r}")
        if pull == 1.0 and pull_every == 1:
            raise ValueError("EMA pull = 1 with pull_every = 1 is the plain optimiser with "
                             "its learning rate scaled by (1 - beta); use pull < 1 or "
                             "pull_every > 1 (or scale the learning rate)")
    alpha, period = float(pull), int(pull_every)

    def init_fn(params: Any) -> ParameterEmaState:
        # A real copy: the state may be donated to a jitted step alongside the params.
        average = jax.tree.map(lambda p: jnp.array(p, dtype=jnp.float32, copy=True), params)
        return ParameterEmaState(jnp.zeros((), jnp.int32), average)

    def update_fn(updates: Any, state: ParameterEmaState, params: Any = None):
        if params is None:
            raise ValueError("parameter_ema needs params: call update(updates, state, params)")
        proposed = optax.apply_updates(params, updates)  # phi'_t
        average = jax.tree.map(
            lambda avg, p: beta * avg + (1.0 - beta) * p.astype(jnp.float32),
            state.average, proposed)
        count = state.count + 1
        if mode == "pull":
            a = jnp.where(count % period == 0, alpha, 0.0).astype(jnp.float32)
            updates = jax.tree.map(
                lambda u, avg, p: (u.astype(jnp.float32)
                                   + a * (avg - p.astype(jnp.float32))).astype(u.dtype),
                updates, average, proposed)
        return updates, ParameterEmaState(count, average)

    return optax.GradientTransformation(init_fn, update_fn)


def find_ema_state(opt_state: Any) -> ParameterEmaState | None:
    """The first `ParameterEmaState` inside a (possibly chained/nested) optimiser state."""
    if isinstance(opt_state, ParameterEmaState):
        return opt_state
    if isinstance(opt_state, (tuple, list)):
        for child in opt_state:
            found = find_ema_state(child)
            if found is not None:
                return found
    if isinstance(opt_state, dict):
        for child in opt_state.values():
            found = find_ema_state(child)
            if found is not None:
                return found
    return None


def ema_params(opt_state: Any) -> Any:
    """The averaged parameters held in an optimiser state built with `parameter_ema`
    (the model to evaluate and export, in either mode)."""
    found = find_ema_state(opt_state)
    if found is None:
        raise ValueError("this optimiser state has no parameter EMA; "
                         "build the optimiser with optax.chain(..., parameter_ema(beta))")
    return found.average
