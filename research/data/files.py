"""Read prompt rows from local files (.txt, .jsonl, .csv, .parquet) with named fields.

Every check happens here, where the data enters, so a bad file fails with its path,
the row number (1-based; the line number for .txt and .jsonl, the data row for .csv and
.parquet) and the field, instead of surfacing later as a shape or type error.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from research.data.rows import DataError, LoadCounts, Row

FILE_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(str(path), f"not valid UTF-8 (byte {err.start}: {err.reason})",
                        row=line) from None


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(row_number, record)`; a .txt line becomes `{"prompt": line}`."""
    path = Path(path)
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(str(path), f"unsupported file type {path.suffix!r}; "
                                   f"use one of {', '.join(FILE_SUFFIXES)}")
    if not path.is_file():
        raise DataError(str(path), "file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise DataError(str(path), f"cannot read parquet ({err})") from None
        for i, record in enumerate(table.to_pylist(), start=1):
            yield i, record
        return
    text = _decode(path)
    if path.suffix == ".txt":
        for i, line in enumerate(text.splitlines(), start=1):
            yield i, {"prompt": line}
    elif path.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(str(path), f"invalid JSON ({err.msg})", row=i) from None
            if not isinstance(record, dict):
                raise DataError(str(path), f"expected a JSON object, got "
                                           f"{type(record).__name__}", row=i)
            yield i, record
    else:
        reader = csv.DictReader(io.StringIO(text))
        for i, record in enumerate(reader, start=1):
            yield i, record


def text_field(record: dict[str, Any], field: str, where: str, row: int, *,
               required: bool = True, allow_number: bool = False) -> str | None:
    """A non-empty string field, or a clear error naming where it failed."""
    if field not in record or record[field] is None:
        if required:
            raise DataError(where, "missing", row=row, field=field)
        return None
    value = record[field]
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(where, f"expected text, got {type(value).__name__}", row=row,
                        field=field)
    if not value.strip():
        raise DataError(where, "empty", row=row, field=field)
    return value.strip()


def load_file(path: str | Path, *, kind: str = "benign", prompt_field: str = "prompt",
              response_field: str | None = None, answer_field: str | None = None,
              category_field: str | None = None,
              source: str | None = None) -> tuple[list[Row], LoadCounts]:
    """Rows from a local file; blank .txt lines are skipped and counted, bad rows raise."""
    path = Path(path)
    where, source = str(path), source or path.name
    counts = LoadCounts()
    rows: list[Row] = []
    if path.suffix == ".csv" and path.is_file():
        header = next(csv.reader(io.StringIO(_decode(path))), None)
        for field in (prompt_field, response_field, answer_field, category_field):
            if header is not None and field is not None and field not in header:
                raise DataError(where, f"column missing from the header {header}",
                                field=field)
    for number, record in iter_records(path):
        counts.read += 1
        if path.suffix == ".txt" and not record["prompt"].strip():
            counts.skip("blank line")
            continue
        field = "prompt" if path.suffix == ".txt" else prompt_field
        rows.append(Row(
            prompt=text_field(record, field, where, number),
            response=(text_field(record, response_field, where, number)
                      if response_field else None),
            answer=(text_field(record, answer_field, where, number, allow_number=True)
                    if answer_field else None),
            category=(text_field(record, category_field, where, number, required=False)
                      if category_field else None),
            kind=kind, source=source, uid=f"{source}:{number}"))
    if not rows:
        raise DataError(where, f"no rows (read {counts.read}, skipped {counts.skipped})")
    counts.kept = len(rows)
    return rows, counts
