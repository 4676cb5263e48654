"""Task correctness: is a completion's answer to a task row right?

Answer types (a task PromptSet's `answer_type`, a row's `answer`):
- "number": `answer` is a number as text; correct when the completion's final number
  (`parse_number`) equals it.
- "label": `answer` is a label word; correct when the first label word in the
  completion (`parse_label`) is it.
- "reasoning_gym": `answer` is the JSON object {"dataset": <reasoning-gym dataset name>,
  "entry": {"question", "answer", "metadata"}} written by research.data.tasks; correct
  when that dataset's own `score_answer(final_answer(completion), entry)` gives full
  credit (1.0). Partial credit (reasoning-gym's shaping for near misses, e.g. the right
  answer inside a longer one) counts as wrong, so accuracy stays a share of 0/1 outcomes.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Callable, Sequence

ANSWER_TYPES = ("number", "label", "reasoning_gym")

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", flags=re.IGNORECASE | re.DOTALL)
_MARKER = re.compile(r"####|\banswer\s*:|\bis\b|=", flags=re.IGNORECASE)
_EDGE_CHARS = " \t:*`$\"'"


def parse_number(text: str) -> float | None:
    """The final numeric answer: after '####' or 'answer is' if present, else the last
    number in the text (thousands separators allowed)."""
    for marker in ("####", "answer is"):
        at = text.lower().rfind(marker)
        if at >= 0:
            found = _NUMBER.search(text[at + len(marker):])
            if found:
                return float(found.group().replace(",", ""))
    numbers = _NUMBER.findall(text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label word that occurs first in the text (whole word, any case)."""
    best, best_at = None, len(text) + 1
    for label in labels:
        found = re.search(rf"\b{re.escape(label)}\b", text, flags=re.IGNORECASE)
        if found and found.start() < best_at:
            best, best_at = label, found.start()
    return best


def final_answer(completion: str) -> str:
    """The answer part of a completion that was asked for its final answer only.

    The content of an <answer>...</answer> tag if there is one (reasoning-gym's own
    format); else the first non-empty line, cut after the last '####', 'answer:', 'is'
    (a whole word) or '=' in it ("The answer is 12." and "3 + 9 = 12" give "12"); then
    stripped of surrounding spaces, colons, quotes, markdown emphasis and a closing
    period. Only the first line counts, so a right number later in a ramble is not
    credited.
    """
    tag = _ANSWER_TAG.search(completion)
    if tag:
        text = tag.group(1)
    else:
        lines = [line for line in completion.strip().splitlines() if line.strip()]
        text = lines[0] if lines else ""
        markers = list(_MARKER.finditer(text))
        if markers:
            text = text[markers[-1].end():]
    text = text.strip(_EDGE_CHARS)
    if text.endswith("."):
        text = text[:-1].strip(_EDGE_CHARS)
    return text


@functools.lru_cache(maxsize=None)
def _rg_scorer(dataset: str) -> Callable[[str | None, dict[str, Any]], float]:
    import reasoning_gym  # imported on first use: only reasoning-gym task rows need it

    return reasoning_gym.get_score_answer_fn(dataset)


def reasoning_gym_answer(dataset: str, entry: dict[str, Any]) -> str:
    """The `answer` of a reasoning-gym task row: what `is_correct` needs to score it.
    Metadata values that JSON cannot hold (e.g. a Fraction) are kept as their str()."""
    return json.dumps({"dataset": dataset, "entry": {
        "question": entry["question"], "answer": entry["answer"],
        "metadata": entry["metadata"]}}, sort_keys=True, default=str)


def reasoning_gym_score(completion: str, answer: str) -> float:
    """reasoning-gym's score (0 to 1) of the completion's final answer for one row."""
    try:
        spec = json.loads(answer)
        dataset, entry = spec["dataset"], spec["entry"]
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise ValueError(f"a reasoning_gym answer must be the JSON written by "
                         f"reasoning_gym_answer, got {answer[:80]!r} ({e})") from None
    return float(_rg_scorer(dataset)(final_answer(completion), entry))


def is_correct(completion: str, answer: str, answer_type: str,
               labels: Sequence[str] = ()) -> bool:
    """Whether the completion answers the task row right (see the module docstring)."""
    if answer_type == "number":
        got = parse_number(completion)
        return got is not None and abs(got - float(answer.replace(",", ""))) < 1e-6
    if answer_type == "label":
        return parse_label(completion, labels) == answer.lower()
    if answer_type == "reasoning_gym":
        return reasoning_gym_score(completion, answer) >= 1.0
    raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
