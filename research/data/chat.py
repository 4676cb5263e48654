"""Training examples in the model's chat template with response-only loss masks.

The prompt part is rendered exactly as generation renders it (`add_generation_prompt`),
and the answer is the rest of the templated conversation (answer text plus the
end-of-turn marker), so training and inference see the same prompt tokens and the
model learns to end its turn. `loss_mask[t]` is True where token t is a training target
(an answer token); the loss shifts it to align with the logits at t-1.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import chex
import numpy as np

from research.data.rows import DataError, LoadCounts, Row

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ChatExample:
    tokens: np.ndarray      # int32 [T]
    loss_mask: np.ndarray   # bool  [T], True on answer tokens
    uid: str
    truncated: bool

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def render_turns(tokenizer: Any, prompt: str, response: str,
                 system: str | None = None) -> tuple[str, str]:
    """(prompt text ending with the assistant header, answer text with end of turn)."""
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    messages.append({"role": "user", "content": prompt})
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):
        raise ValueError("the chat template's conversation does not start with its "
                         "generation prompt; response-only masks need that property")
    return head, full[len(head):]


def format_examples(tokenizer: Any, rows: Sequence[Row], *, max_length: int,
                    system: str | None = None) -> tuple[list[ChatExample], LoadCounts]:
    """Tokenize rows into examples no longer than `max_length`.

    An answer that does not fit is cut (counted as truncated); a prompt leaving no room
    for a single answer token drops the row (counted as skipped). Both are logged.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    for i, row in enumerate(rows, start=1):
        if not row.response:
            raise DataError(row.source, "no answer to train on", row=i, field="response")
        if not row.prompt:
            raise DataError(row.source, "empty", row=i, field="prompt")
    pairs = [render_turns(tokenizer, r.prompt, r.response, system) for r in rows]
    encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
    heads = encode([h for h, _ in pairs]) if pairs else []
    answers = encode([a for _, a in pairs]) if pairs else []
    counts, examples = LoadCounts(read=len(rows)), []
    for row, head, answer in zip(rows, heads, answers):
        room = max_length - len(head)
        if room < 1:
            counts.skip("prompt longer than max_length")
            continue
        cut = len(answer) > room
        answer = answer[:room]
        counts.truncated += int(cut)
        tokens = np.asarray(head + answer, np.int32)
        mask = np.concatenate([np.zeros(len(head), bool), np.ones(len(answer), bool)])
        chex.assert_equal_shape([tokens, mask])
        examples.append(ChatExample(tokens, mask, row.uid, cut))
    counts.kept = len(examples)
    log.info("chat formatting (max_length %d): %s", max_length, counts.to_dict())
    return examples, counts
