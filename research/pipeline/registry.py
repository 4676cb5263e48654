"""Alignment (and fine-tuning) methods by name: each builds the jitted train step.

A method is a function `StepContext -> step(state, frozen, batch) -> (state, metrics)`.
Most methods only supply a microbatch gradient function and reuse
`research.training.make_train_step`; a method that carries state between steps (e.g.
an accelerated perturbation reused for tau steps) can build its own step. A method
module registers itself at import with `@register_method("name")`; list it in
`PLUGINS` so the registry imports it the first time the name is looked up.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import ml_collections
import optax
from flax import nnx

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
ALIGNMENT_METHODS: dict[str, StepBuilder] = {}
# name -> module that registers it when imported (methods living outside this package)
PLUGINS: dict[str, str] = {}


def register_method(name: str) -> Callable[[StepBuilder], StepBuilder]:
    """Decorator adding a step builder under `name` (a second registration is an error)."""
    def add(builder: StepBuilder) -> StepBuilder:
        if name in ALIGNMENT_METHODS and ALIGNMENT_METHODS[name] is not builder:
            raise ValueError(f"alignment method {name!r} is already registered")
        ALIGNMENT_METHODS[name] = builder
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


@register_method("sft")
def sft_step_builder(ctx: StepContext) -> StepFn:
    """Plain supervised fine-tuning on the response tokens."""
    return make_train_step(sft_grad_fn(ctx.graphdef, remat=bool(ctx.method.get("remat", False))),
                           ctx.optimizer, accum_steps=ctx.accum_steps,
                           clip_norm=ctx.clip_norm, schedule=ctx.schedule)


@register_method("vaccine")
def vaccine_step_builder(ctx: StepContext) -> StepFn:
    """Vaccine: perturbation-aware alignment (method.rho, method.site, method.tau)."""
    from research.training.vaccine import vaccine_step_builder as build

    return build(ctx)
