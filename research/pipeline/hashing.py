"""Stable hashes of configs: the key of a stage's cache entry.

Two configs that resolve to the same values (whatever their key order, ConfigDict or
dict, tuple or list) hash the same; any changed value changes the hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import ml_collections


def to_plain(value: Any) -> Any:
    """ConfigDicts, dicts, tuples and lists as JSON-able builtins (tuples become lists)."""
    if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not "
                    "JSON-able; configs may hold only numbers, strings, bools, None, "
                    "lists and dicts")


def config_hash(*parts: Any, length: int = 16) -> str:
    """Hex SHA-256 prefix of the canonical JSON of `parts`."""
    payload = json.dumps([to_plain(p) for p in parts], sort_keys=True,
                         separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]
