"""Parameter EMA as an optax transformation (the optimisation-perspective defence).

theta_bar_t = beta * theta_bar_{t-1} + (1 - beta) * theta_t, with theta_bar_0 the
weights the optimiser starts from (the aligned model), so the average stays anchored
in the aligned basin.

Place it *last* in `optax.chain(optimizer, parameter_ema(...))`: it sees the update u
the optimiser proposes, forms theta_t = theta_{t-1} + u, and updates the average.
- mode "track": u is passed through unchanged; the average lives in the optimiser state
  for evaluation (`ema_params(opt_state)`).
- mode "pull": the emitted update is theta_bar_t - theta_{t-1}, so after
  `optax.apply_updates` the weights *are* the new average. (Algebraically this shrinks
  every step by (1 - beta) relative to the weights; it is the written-back variant the
  design asks for, kept distinct from a learning-rate change because it composes with
  any optimiser state.)
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
    """The running average of the parameters (same tree as the params) and a counter."""

    count: jax.Array
    average: Any


def parameter_ema(beta: float, mode: str = "track") -> optax.GradientTransformation:
    """An optax transform keeping a parameter EMA; see the module docstring for modes."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"EMA beta must be in [0, 1), got {beta!r}")
    if mode not in MODES:
        raise ValueError(f"EMA mode must be one of {MODES}, got {mode!r}")

    def init_fn(params: Any) -> ParameterEmaState:
        # A real copy: the state may be donated to a jitted step alongside the params.
        average = jax.tree.map(lambda p: jnp.array(p, dtype=jnp.float32, copy=True), params)
        return ParameterEmaState(jnp.zeros((), jnp.int32), average)

    def update_fn(updates: Any, state: ParameterEmaState, params: Any = None):
        if params is None:
            raise ValueError("parameter_ema needs params: call update(updates, state, params)")
        new_params = optax.apply_updates(params, updates)
        average = jax.tree.map(
            lambda avg, p: beta * avg + (1.0 - beta) * p.astype(jnp.float32),
            state.average, new_params)
        if mode == "pull":
            updates = jax.tree.map(lambda avg, p: (avg - p).astype(p.dtype), average, params)
        return updates, ParameterEmaState(state.count + 1, average)

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
    """The averaged parameters held in an optimiser state built with `parameter_ema`."""
    found = find_ema_state(opt_state)
    if found is None:
        raise ValueError("this optimiser state has no parameter EMA; "
                         "build the optimiser with optax.chain(..., parameter_ema(beta))")
    return found.average
