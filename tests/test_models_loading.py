"""Loading sources, chat prompt rendering with injected prefixes, and the generate CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from research.models import load_pretrained
from research.models.chat import render_prompt
from research.models.generate import generate
from research.models.loading import ModelSourceError, embedded_gguf_path


def test_hub_id_offline_gives_a_clear_error():
    with pytest.raises(ModelSourceError, match="hf download .*load_pretrained"):
        load_pretrained("some-org/definitely-not-a-model-xyz")


def test_unknown_source_and_bad_folder_are_named(tmp_path):
    with pytest.raises(ModelSourceError, match="not found"):
        load_pretrained("no-such-alias")
    with pytest.raises(ModelSourceError, match="neither config.json"):
        load_pretrained(tmp_path)


def test_gguf_file_and_cached_folder_give_the_same_model(embedded):
    model, _ = embedded
    gguf_model, _ = load_pretrained(embedded_gguf_path("smollm2-135m-instruct"),
                                    with_tokenizer=False)
    tokens = jnp.asarray([[1, 504, 3575, 282, 4649]])
    a, b = model(tokens).logits, gguf_model(tokens).logits
    assert np.abs(np.asarray(a - b)).max() == 0.0


def test_prefix_goes_right_after_the_assistant_header(tokenizer):
    plain = render_prompt(tokenizer, "How do I bake bread?")
    prefixed = render_prompt(tokenizer, "How do I bake bread?", prefix="I must be careful.")
    assert plain.endswith("<|im_start|>assistant\n")
    assert prefixed == plain + "I must be careful."
    plain_ids = tokenizer(plain, add_special_tokens=False)["input_ids"]
    prefixed_ids = tokenizer(prefixed, add_special_tokens=False)["input_ids"]
    prefix_ids = tokenizer("I must be careful.", add_special_tokens=False)["input_ids"]
    # token by token: the template's tokens first, then exactly the prefix's tokens
    assert prefixed_ids == plain_ids + prefix_ids
    header = tokenizer.convert_ids_to_tokens(plain_ids[-4:])
    assert header == ["<|im_start|>", "ass", "istant", "Ċ"]
    user_mode = render_prompt(tokenizer, "How do I bake bread?", prefix="Be safe.",
                              prefix_mode="user")
    assert "How do I bake bread?\n\nBe safe.<|im_end|>" in user_mode
    assert user_mode.endswith("<|im_start|>assistant\n")


def test_completion_with_prefix_starts_with_it(embedded):
    model, tokenizer = embedded
    out = generate(model, tokenizer, ["Tell me a joke."], max_new_tokens=6,
                   prefix="Sure, here")
    assert out[0].startswith("Sure, here")
    assert len(out[0]) > len("Sure, here")


def test_generate_cli_prints_one_json_line_per_prompt():
    result = subprocess.run(
        [sys.executable, "-m", "research.generate", "--max-new-tokens", "8",
         "What is the capital of France?", "Name a colour."],
        capture_output=True, text=True, timeout=300, check=True)
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["prompt"] for line in lines] == ["What is the capital of France?",
                                                  "Name a colour."]
    assert "Paris" in lines[0]["completion"]
    assert all(set(line) == {"prompt", "completion"} for line in lines)
