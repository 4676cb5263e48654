"""Decoder configuration for the Llama family (Llama 2/3, SmolLM2, Mistral, Qwen2).

One frozen dataclass, read from and written to a transformers-style `config.json`,
so a checkpoint can travel between this codebase and PyTorch tooling.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ConfigError(ValueError):
    """A model config field is missing, malformed or unsupported."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # hashable dict
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    sliding_window: int | None = None
    max_position_embeddings: int = 8192
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})")
        if self.model_type not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"ModelConfig.model_type {self.model_type!r} is not supported; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}")
        rope_type = self.rope_dict.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"rope_scaling.rope_type {rope_type!r} is not supported; "
                f"supported: {SUPPORTED_ROPE_TYPES}")

    @property
    def rope_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    @property
    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each per-layer projection, keyed by its short name (q, ..., down)."""
        D, F = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {"q": (D, q), "k": (D, kv), "v": (D, kv), "o": (q, D),
                "gate": (D, F), "up": (D, F), "down": (F, D)}

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # --- transformers config.json ------------------------------------------------
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Read a transformers config dict; errors name the source and the field."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"{source}: field 'model_type' is {model_type!r}; supported architectures: "
                f"{sorted(SUPPORTED_ARCHITECTURES)}")

        def need(field: str) -> Any:
            if field not in hf or hf[field] is None:
                raise ConfigError(f"{source}: required field {field!r} is missing")
            return hf[field]

        num_heads = need("num_attention_heads")
        hidden = need("hidden_size")
        head_dim = hf.get("head_dim") or hidden // num_heads
        rope_scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
        if rope_scaling:
            rope_scaling = dict(rope_scaling)
            rope_scaling.setdefault("rope_type", rope_scaling.pop("type", "default"))
            theta_from_params = rope_scaling.pop("rope_theta", None)
        else:
            theta_from_params = None
        rope_theta = hf.get("rope_theta") or theta_from_params or 10000.0
        if rope_scaling and rope_scaling.get("rope_type") == "default":
            rope_scaling = None
        eos = hf.get("eos_token_id")
        if isinstance(eos, list):
            eos = tuple(eos)
        sliding = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
        if model_type == "qwen2":
            sliding = None  # Qwen2 releases ship use_sliding_window=false
        try:
            return cls(
                vocab_size=need("vocab_size"),
                hidden_size=hidden,
                intermediate_size=need("intermediate_size"),
                num_layers=need("num_hidden_layers"),
                num_heads=num_heads,
                num_kv_heads=hf.get("num_key_value_heads") or num_heads,
                head_dim=head_dim,
                rope_theta=float(rope_theta),
                rope_scaling=tuple(sorted(rope_scaling.items())) if rope_scaling else None,
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                attention_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
                sliding_window=sliding,
                max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
                model_type=model_type,
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=eos,
                pad_token_id=hf.get("pad_token_id"),
            )
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return cls.from_hf_dict(hf, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        hf: dict[str, Any] = {
            "architectures": [SUPPORTED_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_dict or None,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        }
        if self.model_type == "qwen2":
            hf["use_sliding_window"] = False
        else:
            hf["attention_bias"] = self.attention_bias
            hf["mlp_bias"] = False
        if self.model_type == "mistral":
            hf["sliding_window"] = self.sliding_window
        return hf


SMOLLM2_135M = ModelConfig(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
    num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True, max_position_embeddings=8192, model_type="llama",
    bos_token_id=1, eos_token_id=2, pad_token_id=2)
