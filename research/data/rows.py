"""The one row schema every data source returns, and the error raised on bad input.

Keeping a single schema means mixtures, splits and evaluation never need to know where
a row came from; the error type carries file, row and field so a user can fix the input.
"""

from __future__ import annotations

import dataclasses

KINDS = ("harmful", "benign", "task", "refusal")


class DataError(ValueError):
    """Bad input data; the message names the file (or source), the row and the field."""

    def __init__(self, where: str, message: str, *, row: int | None = None,
                 field: str | None = None):
        parts = [where]
        if row is not None:
            parts.append(f"row {row}")
        if field is not None:
            parts.append(f"field {field!r}")
        super().__init__(f"{', '.join(parts)}: {message}")
        self.where, self.row, self.field = where, row, field


@dataclasses.dataclass(frozen=True)
class Row:
    """One example.

    prompt:   the user's request (empty only for kind "refusal", whose text is `response`).
    response: a reference answer if the source has one (refusal, harmful or helpful
              answer, worked task solution), else None.
    answer:   the verifiable answer of a task row: a number as text, a label word, or
              for reasoning-gym rows the JSON {"dataset", "entry"} that the dataset's
              scorer checks (research.evaluation.scoring; `response` holds the plain
              answer).
    kind:     "harmful", "benign", "task" or "refusal".
    source:   the registry name (or file) the row came from.
    category: risk area, task suite or topic, when known.
    uid:      stable id "<source>:<index>" for records and caches.
    """

    prompt: str
    kind: str
    source: str
    uid: str
    response: str | None = None
    answer: str | None = None
    category: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Row.kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.prompt, str):
            raise TypeError(f"Row.prompt must be str, got {type(self.prompt).__name__}")

    def with_response(self, response: str) -> "Row":
        return dataclasses.replace(self, response=response)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LoadCounts:
    """What happened to the rows of a source: nothing is dropped without being counted."""

    read: int = 0
    kept: int = 0
    skipped: int = 0
    truncated: int = 0
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped += count
        self.reasons[reason] = self.reasons.get(reason, 0) + count

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
