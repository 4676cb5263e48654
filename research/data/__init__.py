"""Data: named sources, splits, chat formatting, batches, mixtures, generated content."""

from research.data.rows import DataError, LoadCounts, Row
from research.data.sources import SOURCES, load_any, load_source

__all__ = ["DataError", "LoadCounts", "Row", "SOURCES", "load_any", "load_source"]
