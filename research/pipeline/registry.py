"""Alignment (and fine-tuning) methods by name: each builds the jitted train step.

A method is a function `StepContext -> step(state, frozen, batch) -> (state, metrics)`.
Most methods only supply a microbatch gradient function and reuse
`research.training.make_train_step`; a method that carries state between steps (e.g.
an accelerated perturbation reused for tau steps, or an attacker's parameters in a
game) builds its own step and registers an `init_state` that returns the state its
step starts from. That state is also the template a resumed run restores into, so its
tree must have the checkpoint's structure (a leaf whose shape depends on the data may
be an empty placeholder; see `Checkpointer.restore`). A method module registers itself
at import with `@register_method("name")`; list it in `PLUGINS` so the registry
imports it the first time the name is looked up.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import ml_collections
import optax
from flax import nnx

from research.training.state import init_train_state
from research.training.steps import make_train_step, sft_grad_fn

StepFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class StepContext:
    """Everything a method needs to build its step; `method` is its config block."""

    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    method: ml_collections.ConfigDict
    accum_steps: int = 1
    clip_norm: float | None = 1.0


StepBuilder = Callable[[StepContext], StepFn]
# (context, trainable params, seed) -> the state the method's step starts from
StateInit = Callable[[StepContext, nnx.State, int], Any]
ALIGNMENT_METHODS: dict[str, StepBuilder] = {}
STATE_INITS: dict[str, StateInit] = {}
# name -> module that registers it when imported (methods living outside this package)
PLUGINS: dict[str, str] = {}


def train_state_init(ctx: StepContext, params: nnx.State, seed: int) -> Any:
    """The default start: a `TrainState` at step 0 (what `make_train_step` steps)."""
    return init_train_state(params, ctx.optimizer, seed)


def register_method(name: str, *, init_state: StateInit = train_state_init
                    ) -> Callable[[StepBuilder], StepBuilder]:
    """Decorator adding a step builder (and the state its step starts from) under
    `name`; a second registration is an error."""
    def add(builder: StepBuilder) -> StepBuilder:
        if name in ALIGNMENT_METHODS and ALIGNMENT_METHODS[name] is not builder:
            raise ValueError(f"alignment method {name!r} is already registered")
        ALIGNMENT_METHODS[name], STATE_INITS[name] = builder, init_state
        return builder
    return add


def get_method(name: str) -> StepBuilder:
    """The builder registered as `name`, importing its plug-in module if needed."""
    if name not in ALIGNMENT_METHODS and name in PLUGINS:
        importlib.import_module(PLUGINS[name])
    if name not in ALIGNMENT_METHODS:
        known = sorted(set(ALIGNMENT_METHODS) | set(PLUGINS))
        raise ValueError(f"unknown alignment method {name!r}; known: {', '.join(known)}")
    return ALIGNMENT_METHODS[name]


def build_method(name: str, ctx: StepContext, params: nnx.State, seed: int
                 ) -> tuple[StepFn, Any]:
    """`(step, initial state)` of method `name`: what a training stage runs."""
    step = get_method(name)(ctx)
    return step, STATE_INITS.get(name, train_state_init)(ctx, params, seed)


@register_method("sft")
def sft_step_builder(ctx: StepContext) -> StepFn:
    """Plain supervised fine-tuning on the response tokens."""
    return make_train_step(sft_grad_fn(ctx.graphdef, remat=bool(ctx.method.get("remat", False))),
                           ctx.optimizer, accum_steps=ctx.accum_steps,
                           clip_norm=ctx.clip_norm, schedule=ctx.schedule)


def vaccine_state_init(ctx: StepContext, params: nnx.State, seed: int) -> Any:
    """Accelerated Vaccine (tau > 1) starts from a VaccineState (`method.eps_slots`
    stored perturbations, one per batch shape); plain from a TrainState."""
    from research.training.vaccine import EPS_SLOTS, vaccine_initial_state

    return vaccine_initial_state(train_state_init(ctx, params, seed),
                                 int(ctx.method.get("tau", 1)),
                                 int(ctx.method.get("eps_slots", EPS_SLOTS)))


@register_method("vaccine", init_state=vaccine_state_init)
def vaccine_step_builder(ctx: StepContext) -> StepFn:
    """Vaccine: perturbation-aware alignment (method.rho, .site, .tau, .eps_slots)."""
    from research.training.vaccine import vaccine_step_builder as build

    return build(ctx)
