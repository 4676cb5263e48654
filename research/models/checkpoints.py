"""Checkpoint import (HF safetensors folders, GGUF files) and HF export.

The interchange format is a transformers-style state dict: HF tensor names, PyTorch
layout (`[out, in]` for projections), numpy float32. GGUF files are translated into it
(dequantized, Q/K un-permuted from llama.cpp's RoPE layout); the decoder's stacked
`[L, in, out]` parameters are filled from it and exported back to it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.models.config import ConfigError, ModelConfig
from research.models.transformer import Decoder

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint is missing tensors, has unexpected ones, or has wrong shapes."""


# HF name of each stacked layer parameter; weights are stored transposed in torch.
_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "w_q": "self_attn.q_proj.weight",
    "w_k": "self_attn.k_proj.weight",
    "w_v": "self_attn.v_proj.weight",
    "w_o": "self_attn.o_proj.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
    "b_q": "self_attn.q_proj.bias",
    "b_k": "self_attn.k_proj.bias",
    "b_v": "self_attn.v_proj.bias",
}
_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
}
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


# --------------------------------------------------------------------------- HF state
def expected_hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint for `config` must hold, with its PyTorch shape."""
    D, F, V = config.hidden_size, config.intermediate_size, config.vocab_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    layer = {
        "input_layernorm.weight": (D,), "post_attention_layernorm.weight": (D,),
        "self_attn.q_proj.weight": (q, D), "self_attn.k_proj.weight": (kv, D),
        "self_attn.v_proj.weight": (kv, D), "self_attn.o_proj.weight": (D, q),
        "mlp.gate_proj.weight": (F, D), "mlp.up_proj.weight": (F, D),
        "mlp.down_proj.weight": (D, F),
    }
    if config.attention_bias:
        layer.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                      "self_attn.v_proj.bias": (kv,)})
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    for i in range(config.num_layers):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in layer.items()})
    return shapes


def check_hf_state(config: ModelConfig, state: dict[str, np.ndarray], source: str) -> None:
    """Raise a CheckpointError naming every missing, unexpected or misshapen tensor."""
    expected = expected_hf_shapes(config)
    ignorable = re.compile(r".*rotary_emb\.inv_freq$")
    missing = sorted(set(expected) - set(state))
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # some tied checkpoints still store a copy
    unexpected = sorted(k for k in set(state) - set(expected) if not ignorable.match(k))
    wrong = [f"{k}: expected {expected[k]}, found {tuple(state[k].shape)}"
             for k in sorted(set(expected) & set(state))
             if tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_abbrev(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_abbrev(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_abbrev(wrong)}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


def _abbrev(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def assign_hf_state(model: Decoder, state: dict[str, np.ndarray], source: str) -> None:
    """Fill a decoder's base parameters from an HF state dict (checked first)."""
    cfg = model.config
    if model.per_layer:
        raise ValueError(f"{source}: assign_hf_state fills a stacked decoder; load first, "
                         "then unstack_layers")
    check_hf_state(cfg, state, source)
    model.embed.set_value(_f32(state["model.embed_tokens.weight"]))
    model.final_norm.set_value(_f32(state["model.norm.weight"]))
    if not cfg.tie_word_embeddings:
        model.lm_head.set_value(_f32(state["lm_head.weight"]).T)
    for attr, hf_name in _LAYER_NAMES.items():
        if not hasattr(model.layers, attr):
            continue
        stacked = np.stack([state[f"model.layers.{i}.{hf_name}"]
                            for i in range(cfg.num_layers)])
        if attr.startswith("w_"):
            stacked = stacked.transpose(0, 2, 1)  # torch [out, in] -> [in, out]
        getattr(model.layers, attr).set_value(_f32(stacked))


def hf_state_from_model(model: Decoder) -> dict[str, np.ndarray]:
    """The decoder's base weights as an HF state dict (LoRA adapters merged in)."""
    cfg = model.config
    lora = model.lora_config
    state = {"model.embed_tokens.weight": np.asarray(model.embed.get_value(), np.float32),
             "model.norm.weight": np.asarray(model.final_norm.get_value(), np.float32)}
    if not cfg.tie_word_embeddings:
        state["lm_head.weight"] = np.asarray(model.lm_head.get_value(), np.float32).T.copy()
    for i, layer in enumerate(model.layer_list()):  # either layout
        for attr, hf_name in _LAYER_NAMES.items():
            if attr not in layer:
                continue
            weight = np.asarray(layer[attr], np.float32)
            target = attr[2:]
            if lora is not None and attr.startswith("w_") and target in lora.targets:
                a = np.asarray(layer[f"lora_{target}_a"], np.float32)
                b = np.asarray(layer[f"lora_{target}_b"], np.float32)
                weight = weight + lora.scale * (a @ b)
            if attr.startswith("w_"):
                weight = weight.T  # [in, out] -> torch [out, in]
            state[f"model.layers.{i}.{hf_name}"] = np.ascontiguousarray(weight)
    return state


def _f32(x: np.ndarray) -> jax.Array:
    """A float32 device array (parameters must be JAX arrays, not numpy, to be traced)."""
    return jnp.asarray(x, dtype=jnp.float32)


# --------------------------------------------------------------------------- HF folders
def read_safetensors_folder(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of a single-file or sharded safetensors checkpoint."""
    index = folder / INDEX_NAME
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: field 'weight_map' is missing or not a mapping")
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors files found")
    state: dict[str, np.ndarray] = {}
    for name in files:
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"{index}: shard {name} listed in weight_map is missing")
        state.update(_load_safetensors(path))
    return state


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Load a safetensors file as float32 numpy (through JAX, which knows bfloat16)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="flax") as f:
        return {key: np.asarray(f.get_tensor(key), np.float32) for key in f.keys()}


def load_hf_folder(folder: str | Path, *, lora=None, compute_dtype=None) -> Decoder:
    """Build a decoder from `config.json` + safetensors in `folder`."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{folder}: no config.json (not an HF-format model folder)")
    config = ModelConfig.from_json(config_path)
    return build_from_hf_state(config, read_safetensors_folder(folder), str(folder),
                               lora=lora, compute_dtype=compute_dtype)


def save_hf_folder(model: Decoder, folder: str | Path, tokenizer=None) -> Path:
    """Export config.json + model.safetensors (+ tokenizer files) in HF format."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2))
    save_file(hf_state_from_model(model), str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


# --------------------------------------------------------------------------- GGUF
def _gguf_value(reader, key: str, path: Path, required: bool = True):
    field = reader.fields.get(key)
    if field is None:
        if required:
            raise ConfigError(f"{path}: GGUF metadata field {key!r} is missing")
        return None
    return field.contents()


def config_from_gguf(reader, path: Path) -> ModelConfig:
    arch = _gguf_value(reader, "general.architecture", path)
    if arch not in ("llama", "qwen2"):
        raise ConfigError(
            f"{path}: GGUF field 'general.architecture' is {arch!r}; supported: llama, qwen2")
    get = lambda k, required=True: _gguf_value(reader, f"{arch}.{k}", path, required)  # noqa: E731
    names = {t.name for t in reader.tensors}
    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    vocab = get("vocab_size", False)
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    rope_scaling = None
    if get("rope.scaling.type", False) == "linear":
        rope_scaling = (("factor", float(get("rope.scaling.factor"))), ("rope_type", "linear"))
    tok = lambda k: _gguf_value(reader, f"tokenizer.ggml.{k}", path, False)  # noqa: E731
    return ModelConfig(
        vocab_size=int(vocab), hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")), num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", False) or heads),
        head_dim=int(get("rope.dimension_count", False) or hidden // heads),
        rope_theta=float(get("rope.freq_base", False) or 10000.0),
        rope_scaling=rope_scaling,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        max_position_embeddings=int(get("context_length", False) or 8192),
        model_type=arch,
        bos_token_id=tok("bos_token_id"), eos_token_id=tok("eos_token_id"),
        pad_token_id=tok("padding_token_id"))


def _unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaved-RoPE permutation of Q/K rows (weights or biases)."""
    rows = w.shape[0]
    return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def read_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Config and dequantized HF-named float32 state dict of a GGUF file."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path = Path(path)
    reader = GGUFReader(str(path))
    config = config_from_gguf(reader, path)
    state: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        match = re.fullmatch(r"blk\.(\d+)\.(.+)", tensor.name)
        if match:
            suffix = _GGUF_LAYER_NAMES.get(match.group(2))
            name = suffix and f"model.layers.{match.group(1)}.{suffix}"
        else:
            name = _GGUF_GLOBAL_NAMES.get(tensor.name)
        if name is None:
            if tensor.name.startswith("rope_freqs"):
                continue
            raise CheckpointError(f"{path}: unexpected GGUF tensor {tensor.name!r}")
        shape = tuple(int(d) for d in reversed(tensor.shape))
        value = np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32)
        value = value.reshape(shape)
        if config.model_type == "llama" and tensor.name.endswith(("attn_q.weight", "attn_q.bias")):
            value = _unpermute_rope(value, config.num_heads)
        elif config.model_type == "llama" and tensor.name.endswith(("attn_k.weight", "attn_k.bias")):
            value = _unpermute_rope(value, config.num_kv_heads)
        state[name] = value
    return config, state


def load_gguf(path: str | Path, *, lora=None, compute_dtype=None) -> Decoder:
    config, state = read_gguf(path)
    return build_from_hf_state(config, state, str(path), lora=lora, compute_dtype=compute_dtype)


def build_from_hf_state(config: ModelConfig, state: dict[str, np.ndarray], source: str, *,
                        lora=None, compute_dtype=None) -> Decoder:
    """A decoder holding `state`; built abstractly first so no random init is wasted."""
    import jax.numpy as jnp

    from research.models.lora import attach_lora
    from research.models.transformer import init_decoder

    dtype = compute_dtype or jnp.float32
    model = nnx.eval_shape(lambda: init_decoder(config, compute_dtype=dtype))
    assign_hf_state(model, state, source)
    if lora is not None:
        attach_lora(model, lora)
    return model
