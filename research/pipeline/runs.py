"""Run folders `runs/<experiment>/<run_name>/` (DESIGN convention 7).

A folder is created once; opening an existing one needs `resume=True` (continue it),
so nothing is ever overwritten silently. The resolved config is written on creation
(with `run.name` set to the folder's name) and, on resume, must equal the stored one up
to `run.name`: the folder path already names the run, and a folder named by time was
created from a config whose name was empty.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

from research.pipeline.hashing import to_plain


class RunFolderExistsError(FileExistsError):
    """The run folder exists and the caller did not ask to resume it."""


def default_run_name() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def latest_run_name(root: str | Path, experiment: str, config: Any) -> str | None:
    """The newest run folder of `experiment` (by its config file's time) whose stored
    config equals `config` up to `run.name`, or None."""
    want = _without_run_name(to_plain(config))
    matching = []
    for path in (Path(root) / experiment).glob("*/config.json"):
        try:
            stored = _read_config(path)
        except ValueError as e:  # another run's torn file does not block this one
            logging.warning("skipping when looking for the latest run: %s", e)
            continue
        if _without_run_name(stored) == want:
            matching.append(path)
    if not matching:
        return None
    return max(matching, key=lambda p: (p.stat().st_mtime_ns, p.parent.name)).parent.name


def _read_config(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); a run folder's config.json is "
                         "written by the study script, restore or delete it") from e


def _without_run_name(plain: Any) -> Any:
    """`plain` with `run.name` dropped (the comparison rule of the module docstring)."""
    if isinstance(plain, dict) and isinstance(plain.get("run"), dict):
        return {**plain, "run": {k: v for k, v in plain["run"].items() if k != "name"}}
    return plain


def _identity(record: dict[str, Any]) -> str:
    """What makes two logged records the same event: everything but `cache_hit`, which a
    stage replayed from the cache reports as true where its first run logged false."""
    return json.dumps({k: v for k, v in record.items() if k != "cache_hit"}, sort_keys=True)


class RunFolder:
    """Paths and writers of one run; see the module docstring for the overwrite rule."""

    def __init__(self, root: str | Path, experiment: str, name: str, config: Any, *,
                 resume: bool = False):
        self.path = Path(root) / experiment / name
        plain = to_plain(config)
        if isinstance(plain, dict) and isinstance(plain.get("run"), dict):
            plain["run"] = {**plain["run"], "name": name}
        config_file = self.path / "config.json"
        if self.path.exists() and any(self.path.iterdir()):
            if not resume:
                raise RunFolderExistsError(
                    f"{self.path} already exists; pass --resume to continue it or choose "
                    f"another --config.run.name")
            if config_file.exists():
                stored = _read_config(config_file)
                if _without_run_name(stored) != _without_run_name(plain):
                    raise ValueError(f"{config_file}: the stored config differs from this "
                                     "run's config; a resumed run must use the same config")
        self.path.mkdir(parents=True, exist_ok=True)
        for sub in ("plots", "checkpoints", "records"):
            (self.path / sub).mkdir(exist_ok=True)
        if not config_file.exists():
            config_file.write_text(json.dumps(plain, indent=2) + "\n")
        self._logged = self._logged_records() if resume else set()

    def checkpoint(self, stage: str) -> Path:
        return self.path / "checkpoints" / stage

    def _logged_records(self) -> set[str]:
        """Identities of the records metrics.jsonl holds; a torn last line (a crash
        mid-write) is ended so that the next record starts on a line of its own."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return set()
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n")
        found = set()
        for line in text.splitlines():
            try:
                found.add(_identity(json.loads(line)))
            except (json.JSONDecodeError, AttributeError):
                continue  # the torn line: kept in the file, matches nothing
        return found

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (stage events and summaries).

        A resumed run replays its finished stages from the caches: a record equal (apart
        from `cache_hit`) to one the folder held when it was reopened is not written
        again, so each stage and evaluation is logged once.
        """
        if _identity(record) in self._logged:
            return
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def write_json(self, name: str, data: Any) -> Path:
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(target)
        return target

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        target.write_text(text, encoding="utf-8")
        return target
