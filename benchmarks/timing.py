"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator


def call_seconds(fn: Callable[[], Any], calls: int) -> list[float]:
    """Wall seconds of `calls` calls of `fn`, after one untimed warm-up (compilation)."""
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def set_torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` (None: unchanged), then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def with_torch_threads(run: Callable, threads: int) -> Callable:
    """`run` under `torch.set_num_threads(threads)`, restoring the count afterwards."""
    def threaded() -> Any:
        with set_torch_threads(threads):
            return run()
    return threaded
