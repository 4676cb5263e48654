"""transformers/PyTorch reference models for parity tests (torch imported lazily)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

TINY_COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5,
                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
TINY_CONFIGS = {
    "llama_gqa_tied": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "llama_untied": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=False)),
    "qwen2_bias": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama3_rope": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=False,
                                  rope_theta=500000.0,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 16})),
    "mistral_window": ("mistral", dict(num_key_value_heads=2, tie_word_embeddings=False,
                                       sliding_window=4)),
}
TINY_INPUT_IDS = np.random.default_rng(0).integers(3, 128, size=(2, 12)).tolist()

EMBEDDED_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "How do I make a simple stir-fry?",
    "Explain why the sky is blue in two sentences.",
    "Give me three tips for learning a new language.",
]


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def tiny_reference_model(name: str, seed: int = 0):
    import torch
    import transformers

    model_type, extra = TINY_CONFIGS[name]
    config_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
                  "mistral": transformers.MistralConfig}[model_type]
    config = config_cls(**TINY_COMMON, **extra)
    if model_type == "qwen2":
        config.use_sliding_window = False
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # non-trivial norms and biases, so their loading is tested too
        for name_, p in model.named_parameters():
            if "norm" in name_ or name_.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def embedded_gguf() -> Path:
    from research.models.loading import embedded_gguf_path

    return embedded_gguf_path("smollm2-135m-instruct")


def embedded_reference():
    """transformers' own model + tokenizer loaded from the embedded GGUF file."""
    import transformers

    path = embedded_gguf()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype="float32").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tokenizer


def embedded_prompt_ids(tokenizer) -> list[list[int]]:
    from research.models.chat import render_prompt

    return [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
            for p in EMBEDDED_PROMPTS]


def embedded_reference_logits() -> np.ndarray:
    """Last-position float32 logits `[5, V]` of transformers on the embedded prompts."""
    import torch

    model, tokenizer = embedded_reference()
    rows = []
    with torch.no_grad():
        for ids in embedded_prompt_ids(tokenizer):
            rows.append(model(torch.tensor([ids])).logits[0, -1].float().numpy())
    return np.stack(rows)


def reference_greedy_ids(prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    import torch

    model, tokenizer = embedded_reference()
    assert prompts == EMBEDDED_PROMPTS
    out = []
    with torch.no_grad():
        for ids in embedded_prompt_ids(tokenizer):
            gen = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.eos_token_id)
            new = gen[0, len(ids):].tolist()
            if tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id)]
            out.append(new)
    return out
