"""LoRA adapters: configuration, parameter type, merging and switching off.

Adapters live on the decoder as `LoRAParam` variables (a subclass of `nnx.Param`), so
`nnx.split(model, LoRAParam, ...)` selects exactly the trainable adapter subset. The
reference model for DPO-style losses is the same weights with the adapter switched off
(`model(..., lora_enabled=False)`), never a second copy.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


class LoRAParam(nnx.Param):
    """A trainable LoRA adapter matrix (A or B)."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoRAConfig.rank must be a positive int, got {self.rank!r}")
        unknown = sorted(set(self.targets) - set(LORA_TARGETS))
        if unknown or not self.targets:
            raise ValueError(
                f"LoRAConfig.targets has unknown modules {unknown or '(empty)'}; "
                f"choose from {LORA_TARGETS}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def attach_lora(model, config: LoRAConfig, seed: int = 0) -> None:
    """Add fresh adapters to a decoder: A kaiming-uniform (as PEFT), B zero, so the
    adapted model starts equal to the base model."""
    if model.lora_config is not None:
        raise ValueError("this model already has LoRA adapters")
    if model.per_layer:
        raise ValueError("attach LoRA adapters before unstack_layers: they are created "
                         "stacked, like the weights they adapt")
    L = model.config.num_layers
    shapes = model.config.projection_shapes
    keys = jax.random.split(jax.random.key(seed), len(config.targets))
    for key, name in zip(keys, config.targets):
        din, dout = shapes[name]
        bound = 1.0 / math.sqrt(din)
        a = jax.random.uniform(key, (L, din, config.rank), minval=-bound, maxval=bound)
        setattr(model.layers, f"lora_{name}_a", LoRAParam(a))
        setattr(model.layers, f"lora_{name}_b", LoRAParam(jnp.zeros((L, config.rank, dout))))
    model.lora_config = config


def lora_filter() -> type[nnx.Variable]:
    """NNX filter selecting the adapter parameters (for trainable-subset splits)."""
    return LoRAParam


def merge_lora(model) -> None:
    """Fold every adapter into its base weight in place and zero the B matrices.

    Afterwards the model computes the same function with or without the adapter, so it
    can be exported as a plain checkpoint.
    """
    if model.lora_config is None:
        return
    scale = model.lora_config.scale
    groups = list(model.layers) if model.per_layer else [model.layers]
    for group, target in ((g, t) for g in groups for t in model.lora_config.targets):
        a = getattr(group, f"lora_{target}_a")
        b = getattr(group, f"lora_{target}_b")
        w = getattr(group, f"w_{target}")
        delta = jnp.einsum("...ir,...ro->...io", a.get_value(), b.get_value())
        w.set_value(w.get_value() + scale * delta)
        b.set_value(jnp.zeros_like(b.get_value()))
