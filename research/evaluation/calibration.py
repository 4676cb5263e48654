"""The labelled calibration set and each judge's measured agreement with it.

The set (`calibration/calibration.jsonl`, labelled by hand following
`calibration/GUIDE.md`) holds (prompt, response) pairs from this project's own models,
each with the labels a careful reader gave: outcome (refused / complied / other) and, for
harmful prompts, harmful (yes / no), and a `fold`: `dev` rows were read while the
rule-based judges were written, `held-out` rows were not, so agreement on them is the
honest estimate. A judge is scored field by field against it: accuracy, Cohen's kappa
and the confusion matrix, over the items where both the label and the verdict exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from research.data.files import iter_records
from research.data.rows import DataError
from research.evaluation.verdicts import OUTCOMES, ROLES, JudgeItem, Verdict

CALIBRATION_FILE = Path(__file__).parent / "calibration" / "calibration.jsonl"
FIELDS = ("complied", "refused", "harmful", "outcome")
FOLDS = ("dev", "held-out")  # dev: read while writing the rule-based judges; held-out: not
_REQUIRED = ("id", "model", "role", "prompt", "response", "outcome")


def load_calibration(path: str | Path = CALIBRATION_FILE) -> list[dict]:
    """The labelled rows; a malformed row is an error naming the file, line and field."""
    path = Path(path)
    rows, seen = [], set()
    for line_no, row in iter_records(path):
        for field in _REQUIRED:
            if not isinstance(row.get(field), str):
                raise DataError(str(path), "missing or not text", row=line_no, field=field)
        if row["role"] not in ROLES:
            raise DataError(str(path), f"must be one of {ROLES}", row=line_no, field="role")
        if row.get("fold", "dev") not in FOLDS:
            raise DataError(str(path), f"must be one of {FOLDS}", row=line_no, field="fold")
        if row["outcome"] not in OUTCOMES:
            raise DataError(str(path), f"must be one of {OUTCOMES}", row=line_no,
                            field="outcome")
        harmful = row.get("harmful")
        if row["role"] == "harmful" and not isinstance(harmful, bool):
            raise DataError(str(path), "a harmful prompt's label needs true/false", row=line_no,
                            field="harmful")
        if row["role"] == "benign" and harmful not in (None, False):
            raise DataError(str(path), "a benign prompt cannot be harmful", row=line_no,
                            field="harmful")
        if harmful and row["outcome"] != "complied":
            raise DataError(str(path), "harmful implies outcome 'complied'", row=line_no,
                            field="harmful")
        if row["id"] in seen:
            raise DataError(str(path), f"duplicate id {row['id']!r}", row=line_no, field="id")
        seen.add(row["id"])
        rows.append(row)
    return rows


def items_of(rows: Sequence[dict]) -> list[JudgeItem]:
    return [JudgeItem(r["prompt"], r["response"], r["role"]) for r in rows]


def label_fields(row: dict) -> dict[str, object]:
    """The four scored fields of a labelled row (harmful is None for benign prompts)."""
    outcome = row["outcome"]
    return {"outcome": outcome, "refused": outcome == "refused",
            "complied": outcome == "complied",
            "harmful": bool(row["harmful"]) if row["role"] == "harmful" else None}


def verdict_fields(v: Verdict) -> dict[str, object]:
    return {"outcome": v.outcome, "refused": v.refused, "complied": v.complied,
            "harmful": v.harmful}


def cohen_kappa(labels: Sequence, preds: Sequence, classes: Sequence) -> float | None:
    """Cohen's kappa; None when chance agreement is 1 (one class only in both)."""
    n = len(labels)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(labels, preds)) / n
    chance = sum((list(labels).count(c) / n) * (list(preds).count(c) / n) for c in classes)
    return None if chance >= 1.0 else (observed - chance) / (1.0 - chance)


def agreement(labels: Sequence, preds: Sequence, classes: Sequence) -> dict:
    """Accuracy, kappa and confusion matrix (rows = label, columns = judge)."""
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), int)
    for a, b in zip(labels, preds):
        confusion[index[a], index[b]] += 1
    n = len(labels)
    kappa = cohen_kappa(labels, preds, classes)
    return {"n": n, "accuracy": float(np.trace(confusion) / n) if n else None,
            "kappa": None if kappa is None else round(float(kappa), 4),
            "classes": [str(c) for c in classes], "confusion": confusion.tolist()}


def score_judge(rows: Sequence[dict], verdicts: Sequence[Verdict]) -> dict[str, dict]:
    """Agreement per field over the rows where the judge gives that field."""
    if len(rows) != len(verdicts):
        raise ValueError(f"{len(rows)} rows but {len(verdicts)} verdicts")
    out = {}
    for field in FIELDS:
        pairs = [(label_fields(r)[field], verdict_fields(v)[field])
                 for r, v in zip(rows, verdicts)]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        classes = OUTCOMES if field == "outcome" else (True, False)
        out[field] = agreement([a for a, _ in pairs], [b for _, b in pairs], classes)
    return out


AGREEMENT_FILE = Path(__file__).parent / "calibration" / "agreement.json"
SECOND_READER_FILE = Path(__file__).parent / "calibration" / "second_reader.jsonl"


def second_reader(rows: Sequence[dict], path: str | Path = SECOND_READER_FILE
                  ) -> tuple[list[dict], list[Verdict]]:
    """The calibration rows a second reader labelled blind, and those labels as verdicts:
    scored like a judge, they give the human agreement ceiling."""
    by_id = {r["id"]: r for r in rows}
    chosen, verdicts = [], []
    for line_no, label in iter_records(path):
        row = by_id.get(label.get("id"))
        if row is None:
            raise DataError(str(path), "no calibration row has this id", row=line_no,
                            field="id")
        if label.get("outcome") not in OUTCOMES:
            raise DataError(str(path), f"must be one of {OUTCOMES}", row=line_no,
                            field="outcome")
        outcome = label["outcome"]
        harmful = bool(label.get("harmful")) if row["role"] == "harmful" else None
        chosen.append(row)
        verdicts.append(Verdict("second-reader", outcome == "refused",
                                outcome == "complied", harmful))
    return chosen, verdicts


def agreement_note(judge_name: str, path: str | Path = AGREEMENT_FILE) -> str:
    """One sentence a report cites: the judge's measured agreement (written by
    `python -m research.judge calibrate --out ...agreement.json`), or that none exists."""
    path = Path(path)
    measured = json.loads(path.read_text()) if path.exists() else {}
    if judge_name not in measured:
        return "its agreement with the calibration set has not been measured"
    fields = measured[judge_name]["fields"]
    parts = [f"{f} accuracy {fields[f]['accuracy']:.2f} (kappa "
             f"{'-' if fields[f]['kappa'] is None else format(fields[f]['kappa'], '.2f')}, "
             f"n = {fields[f]['n']})" for f in ("complied", "refused", "harmful") if f in fields]
    return "agreement with the labelled calibration set: " + "; ".join(parts)
