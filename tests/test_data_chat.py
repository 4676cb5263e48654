"""Chat formatting: the template's prompt part, response-only masks token by token,
truncation counted."""

from __future__ import annotations

import numpy as np
import pytest

from research.data import DataError, Row
from research.data.chat import format_examples, render_turns
from research.models.chat import render_prompt


def _row(prompt, response, i=0):
    return Row(prompt=prompt, response=response, kind="benign", source="t", uid=f"t:{i}")


def test_prompt_part_matches_generation_and_mask_covers_exactly_the_answer(tokenizer):
    head, answer = render_turns(tokenizer, "Hi there", "Hello! How can I help?")
    assert head == render_prompt(tokenizer, "Hi there")
    assert answer.startswith("Hello! How can I help?") and "<|im_end|>" in answer
    (ex,), counts = format_examples(tokenizer, [_row("Hi there", "Hello! How can I help?")],
                                    max_length=256)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert ex.tokens.tolist() == head_ids + answer_ids
    assert ex.loss_mask.tolist() == [False] * len(head_ids) + [True] * len(answer_ids)
    masked = ex.tokens[ex.loss_mask]
    assert tokenizer.decode(masked).startswith("Hello! How can I help?")
    assert int(tokenizer.convert_tokens_to_ids("<|im_end|>")) in masked.tolist()
    assert counts.kept == 1 and counts.truncated == 0 and ex.tokens.dtype == np.int32


def test_system_prompt_is_in_the_unmasked_part(tokenizer):
    (ex,), _ = format_examples(tokenizer, [_row("Q", "A")], max_length=256, system="Be brief.")
    prompt_text = tokenizer.decode(ex.tokens[~ex.loss_mask])
    assert "Be brief." in prompt_text and "SmolLM" not in prompt_text


def test_truncation_and_overlong_prompts_are_counted(tokenizer):
    rows = [_row("Short?", "word " * 100, 0), _row("Short?", "ok", 1),
            _row("long " * 300, "x", 2)]
    examples, counts = format_examples(tokenizer, rows, max_length=64)
    assert [e.uid for e in examples] == ["t:0", "t:1"]
    assert len(examples[0]) == 64 and examples[0].truncated and not examples[1].truncated
    assert counts.truncated == 1 and counts.reasons == {"prompt longer than max_length": 1}
    assert counts.read == 3 and counts.kept == 2


def test_rows_without_answers_are_rejected(tokenizer):
    with pytest.raises(DataError, match="row 2, field 'response'"):
        format_examples(tokenizer, [_row("a", "b"), _row("c", None)], max_length=64)
