"""Generated content is cached on disk by model, prompts and settings."""

from __future__ import annotations

import pytest

from research.data import Row
from research.data.generated import (GenerationSettings, answer_rows, benign_answers,
                                     cache_key, cached_completions)
from research.models.config import ModelConfig
from research.models.transformer import init_decoder


class CountingGenerator:
    """Records each call, so the test sees whether the cache was used."""

    def __init__(self, answers):
        self.answers, self.calls = answers, 0

    def __call__(self, prompts, settings):
        self.calls += 1
        return [self.answers.get(p, f"answer to {p}") for p in prompts]


def _rows(prompts):
    return [Row(prompt=p, kind="harmful", source="h", uid=f"h:{i}") for i, p in enumerate(prompts)]


def test_cache_hits_only_for_same_model_prompts_and_settings(tmp_path):
    gen, s = CountingGenerator({}), GenerationSettings(max_new_tokens=8)
    first = cached_completions("m", ["a", "b"], s, gen, tmp_path)
    assert first == ["answer to a", "answer to b"] and gen.calls == 1
    assert cached_completions("m", ["a", "b"], s, gen, tmp_path) == first and gen.calls == 1
    cached_completions("m2", ["a", "b"], s, gen, tmp_path)
    cached_completions("m", ["a", "b", "c"], s, gen, tmp_path)
    cached_completions("m", ["a", "b"], GenerationSettings(max_new_tokens=8, seed=1), gen,
                       tmp_path)
    assert gen.calls == 4 and len(list(tmp_path.glob("*.jsonl"))) == 4
    assert cache_key("m", ["a"], s) != cache_key("m", ["a"], GenerationSettings(temperature=1))


def test_answer_rows_drop_refusals_and_empty_answers_with_counts(tmp_path):
    gen = CountingGenerator({"x": "I'm sorry, but I can't help with that.", "y": "  ",
                             "z": "Step 1: do the thing."})
    rows, counts = answer_rows(_rows(["x", "y", "z"]), "m", gen, GenerationSettings(),
                               cache_dir=tmp_path)
    assert [(r.prompt, r.response) for r in rows] == [("z", "Step 1: do the thing.")]
    assert counts.reasons == {"answer is a refusal": 1, "empty answer": 1}


def test_wrong_length_generator_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="1 completions for 2 prompts"):
        cached_completions("m", ["a", "b"], GenerationSettings(), lambda p, s: ["one"], tmp_path)


def test_real_generation_on_a_tiny_model_is_cached(tokenizer, tmp_path):
    model = init_decoder(ModelConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                                     tie_word_embeddings=True, eos_token_id=2, bos_token_id=1,
                                     pad_token_id=2))
    rows = [Row(prompt="Tell me a riddle!", kind="benign", source="b", uid="b:0"),
            Row(prompt="How do I make tea?", kind="benign", source="b", uid="b:1")]
    s = GenerationSettings(max_new_tokens=4, batch_size=2)
    first, counts = benign_answers(model, tokenizer, "tiny", rows, settings=s,
                                   cache_dir=tmp_path)
    assert counts.read == 2 and counts.kept + counts.skipped == 2
    (cache_file,) = tmp_path.glob("*.jsonl")
    stamp = cache_file.stat().st_mtime_ns
    again, _ = benign_answers(model, tokenizer, "tiny", rows, settings=s, cache_dir=tmp_path)
    assert again == first and cache_file.stat().st_mtime_ns == stamp
