"""Parity with transformers/PyTorch: tiny random configs and the embedded model.

Each test runs against committed golden arrays (made by tests/golden/make_golden.py);
the `live` variants rebuild the reference with torch when it is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from research.models import load_pretrained
from research.models.generate import generate_ids
from tests.reference_models import (EMBEDDED_PROMPTS, TINY_CONFIGS, TINY_INPUT_IDS,
                                    embedded_prompt_ids, torch_available)

GOLDEN = Path(__file__).parent / "golden"
needs_torch = pytest.mark.skipif(not torch_available(), reason="reference extra not installed")


def our_logits(folder) -> np.ndarray:
    model, _ = load_pretrained(folder, with_tokenizer=False)
    return np.asarray(model(jnp.asarray(TINY_INPUT_IDS)).logits)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tiny_config_matches_golden_logits(name):
    expected = np.load(GOLDEN / name / "logits.npy")
    got = our_logits(GOLDEN / name)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


@needs_torch
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tiny_config_matches_live_transformers(name, tmp_path):
    import torch

    from tests.reference_models import tiny_reference_model

    reference = tiny_reference_model(name, seed=1)  # other weights than the golden ones
    reference.save_pretrained(tmp_path, safe_serialization=True)
    with torch.no_grad():
        expected = reference(torch.tensor(TINY_INPUT_IDS)).logits.numpy()
    assert np.abs(our_logits(tmp_path) - expected).max() <= 1e-4


@needs_torch
@pytest.mark.parametrize("name", ["llama_gqa_tied", "qwen2_bias", "llama3_rope"])
def test_export_loads_back_in_transformers(name, tmp_path):
    import torch
    import transformers

    from research.models.checkpoints import save_hf_folder

    model, _ = load_pretrained(GOLDEN / name, with_tokenizer=False)
    save_hf_folder(model, tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype="float32")
    with torch.no_grad():
        theirs = reference(torch.tensor(TINY_INPUT_IDS)).logits.numpy()
    assert np.abs(theirs - np.load(GOLDEN / name / "logits.npy")).max() <= 1e-4


def test_embedded_logits_match_transformers_golden(embedded):
    model, tokenizer = embedded
    expected = np.load(GOLDEN / "embedded_logits.npz")["logits"]
    for row, ids in enumerate(embedded_prompt_ids(tokenizer)):
        got = np.asarray(model(jnp.asarray([ids]), logits="last").logits[0])
        assert np.abs(got - expected[row]).max() <= 1e-3, f"prompt {row}"
        assert got.argmax() == expected[row].argmax()


def test_embedded_greedy_completions_match_golden(embedded):
    model, tokenizer = embedded
    golden = json.loads((GOLDEN / "embedded_greedy.json").read_text())
    assert golden["prompts"] == EMBEDDED_PROMPTS
    got = generate_ids(model, embedded_prompt_ids(tokenizer), max_new_tokens=32,
                       eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id)
    assert got == golden["new_token_ids"]
