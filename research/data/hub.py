"""Hub datasets through `datasets.load_dataset`, mapped onto the project's row schema.

Real runs name a hub id; tests and offline users pass `data_files` (local files shaped
like the hub's) and the same column mapping applies, so the mapping is what is tested.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from research.data.rows import DataError, LoadCounts, Row
from research.data.suites import SENTIMENT_LABELS, TOPIC_LABELS, sentiment_prompt, topic_prompt

_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class HubSpec:
    """Where a hub dataset lives and how one of its records becomes a Row (or None to skip)."""

    hub_id: str
    config: str | None
    split: str
    kind: str
    columns: tuple[str, ...]
    to_row: Callable[[dict[str, Any]], dict[str, Any] | None]


class _BadValue(Exception):
    """A mapped record's field holds a value the mapping cannot use."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _gsm8k(r: dict) -> dict:
    answer = r["answer"].rsplit("####", 1)
    if len(answer) != 2:
        raise _BadValue("answer", "no '####' final answer")
    return dict(prompt=r["question"], response=r["answer"].strip(),
                answer=answer[1].strip().replace(",", ""), category="gsm8k")


def _alpaca(r: dict) -> dict:
    extra = (r.get("input") or "").strip()
    prompt = r["instruction"].strip() + (f"\n\n{extra}" if extra else "")
    return dict(prompt=prompt, response=r["output"], category="alpaca")


def _label(names: tuple[str, ...], value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(names):
        raise _BadValue("label", f"must be an int in [0, {len(names) - 1}], got {value!r}")
    return names[value]


def _beavertails(r: dict, want_safe: bool | None) -> dict | None:
    if not isinstance(r["is_safe"], bool):
        raise _BadValue("is_safe", f"must be a bool, got {r['is_safe']!r}")
    if want_safe is not None and r["is_safe"] != want_safe:
        return None
    flags = r.get("category") or {}
    category = next((name for name, on in sorted(flags.items()) if on), None)
    return dict(prompt=r["prompt"], response=r["response"], category=category)


HUB_SOURCES: dict[str, HubSpec] = {
    # BeaverTails: harmful answers (is_safe False) for the user's harmful data.
    "beavertails": HubSpec("PKU-Alignment/BeaverTails", None, "30k_train", "harmful",
                           ("prompt", "response", "is_safe"),
                           lambda r: _beavertails(r, False)),
    # BeaverTails safe pairs (is_safe True): the Vaccine paper's alignment data.
    "beavertails_safe": HubSpec("PKU-Alignment/BeaverTails", None, "30k_train", "harmful",
                                ("prompt", "response", "is_safe"),
                                lambda r: _beavertails(r, True)),
    "advbench_hub": HubSpec("walledai/AdvBench", None, "train", "harmful", ("prompt",),
                            lambda r: dict(prompt=r["prompt"], response=r.get("target"))),
    "alpaca": HubSpec("tatsu-lab/alpaca", None, "train", "benign",
                      ("instruction", "output"), _alpaca),
    "sst2": HubSpec("stanfordnlp/sst2", None, "train", "task", ("sentence", "label"),
                    lambda r: dict(prompt=sentiment_prompt(r["sentence"].strip()),
                                   response=_label(SENTIMENT_LABELS, r["label"]),
                                   answer=_label(SENTIMENT_LABELS, r["label"]),
                                   category="sentiment")),
    "ag_news": HubSpec("fancyzhx/ag_news", None, "train", "task", ("text", "label"),
                       lambda r: dict(prompt=topic_prompt(r["text"].strip()),
                                      response=_label(TOPIC_LABELS, r["label"]),
                                      answer=_label(TOPIC_LABELS, r["label"]),
                                      category="topic")),
    "gsm8k": HubSpec("openai/gsm8k", "main", "train", "task", ("question", "answer"), _gsm8k),
}


def _load_dataset(spec: HubSpec, name: str, data_files: str | list[str] | None,
                  split: str | None):
    import datasets

    if data_files is not None:
        files = [data_files] if isinstance(data_files, (str, Path)) else list(data_files)
        suffixes = {Path(f).suffix for f in files}
        if len(suffixes) != 1 or next(iter(suffixes)) not in _BUILDERS:
            raise DataError(name, f"data_files must share one type of {sorted(_BUILDERS)}, "
                                  f"got {sorted(map(str, files))}")
        for f in files:
            if not Path(f).is_file():
                raise DataError(str(f), "file not found")
        builder = _BUILDERS[suffixes.pop()]
        return datasets.load_dataset(builder, data_files=[str(f) for f in files],
                                     split="train"), ", ".join(map(str, files))
    try:
        return datasets.load_dataset(spec.hub_id, spec.config, split=split or spec.split), \
            spec.hub_id
    except Exception as err:  # offline, gated or renamed: one clear message
        raise DataError(name, f"could not load {spec.hub_id!r} from the hub "
                              f"({type(err).__name__}). Offline, download it elsewhere and "
                              f"pass data_files=... (local .jsonl/.csv/.parquet files with "
                              f"columns {list(spec.columns)})") from None


def load_hub(name: str, *, data_files: str | list[str] | None = None,
             split: str | None = None) -> tuple[list[Row], LoadCounts]:
    """Rows of a hub source; a missing/typed-wrong column names the file, row and field."""
    spec = HUB_SOURCES[name]
    table, where = _load_dataset(spec, name, data_files, split)
    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        raise DataError(where, f"columns {missing} missing (has {table.column_names})",
                        field=missing[0])
    counts, rows = LoadCounts(), []
    for i, record in enumerate(table, start=1):
        counts.read += 1
        try:
            mapped = spec.to_row(record)
        except KeyError as err:
            raise DataError(where, "missing", row=i, field=str(err.args[0])) from None
        except _BadValue as err:
            raise DataError(where, f"bad value: {err}", row=i, field=err.field) from None
        except (TypeError, AttributeError) as err:
            field = next((c for c in spec.columns if c in str(err)), None)
            raise DataError(where, f"wrong type ({err})", row=i, field=field) from None
        if mapped is None:
            counts.skip("filtered by mapping")
            continue
        for field in ("prompt", "response", "answer"):
            value = mapped.get(field)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise DataError(where, f"empty or not text ({value!r})", row=i, field=field)
        if not mapped.get("prompt"):
            raise DataError(where, "empty", row=i, field="prompt")
        rows.append(Row(kind=spec.kind, source=name, uid=f"{name}:{i}",
                        **{k: (v.strip() if isinstance(v, str) else v)
                           for k, v in mapped.items()}))
    counts.kept = len(rows)
    if not rows:
        raise DataError(where, f"no rows kept (read {counts.read}, skipped {counts.skipped})")
    return rows, counts

