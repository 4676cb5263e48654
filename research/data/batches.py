"""Padded numpy batches with length bucketing, seeded shuffling and a resumable iterator.

Examples of similar length share a batch padded to a bucket length, so padding stays
small and the number of distinct shapes (compilations) stays fixed. Every batch has
exactly `batch_size` rows (a short last batch gets empty rows with all-False masks), so
it shards evenly over a data axis. Training batches also carry `loss_rows`, the positions
the loss reads (`with_loss_rows`). The epoch order is a pure function of
(seed, epoch), so an iterator's position is two integers and restores exactly.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import chex
import numpy as np

from research.data.chat import ChatExample

DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ValueError(f"example of {length} tokens exceeds the largest bucket {max(buckets)}; "
                     f"truncate it when formatting (max_length) or add a bucket")


def plan_epoch(lengths: Sequence[int], batch_size: int, buckets: Sequence[int], seed: int,
               epoch: int, drop_remainder: bool = False) -> list[tuple[int, np.ndarray]]:
    """The epoch's batches as (padded length, example indices), seeded by (seed, epoch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng([seed, epoch])
    by_bucket: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_bucket.setdefault(bucket_for(n, buckets), []).append(i)
    plan = []
    for length in sorted(by_bucket):
        members = rng.permutation(np.asarray(by_bucket[length]))
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            if drop_remainder and len(chunk) < batch_size:
                continue
            plan.append((length, chunk))
    return [plan[i] for i in rng.permutation(len(plan))]


def collate(examples: Sequence[ChatExample], indices: np.ndarray, length: int,
            batch_size: int, pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded arrays `[batch_size, length]`: tokens, attention_mask, loss_mask."""
    tokens = np.full((batch_size, length), pad_id, np.int32)
    attention = np.zeros((batch_size, length), bool)
    loss = np.zeros((batch_size, length), bool)
    for r, i in enumerate(indices):
        ex = examples[int(i)]
        n = len(ex)
        tokens[r, :n], attention[r, :n], loss[r, :n] = ex.tokens, True, ex.loss_mask
    chex.assert_shape([tokens, attention, loss], (batch_size, length))
    return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss}


def response_rows(loss_mask: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Per row, the positions t whose logits predict a response token (`loss_mask[t+1]`
    on a real token), in order, padded with T-1, which predicts nothing: `[B, R]` int32.

    Why: the loss then unembeds only these positions; the `[positions, vocab]` logits
    are the step's largest products, and prompts need none of them. R is the longest
    row's count rounded up to a multiple of max(16, T // 8), at most T-1, so one padded
    length compiles at most 8 step shapes.
    """
    chex.assert_rank(loss_mask, 2)
    chex.assert_equal_shape([loss_mask, attention_mask])
    B, T = loss_mask.shape
    predicts = (loss_mask[:, 1:] != 0) & (attention_mask[:, 1:] != 0)
    multiple = max(16, T // 8)
    longest = int(predicts.sum(axis=1).max(initial=0))
    width = max(1, min(T - 1, max(1, -(-longest // multiple)) * multiple))
    rows = np.full((B, width), T - 1, np.int32)
    for r in range(B):
        positions = np.flatnonzero(predicts[r])
        rows[r, :len(positions)] = positions
    return rows


def with_loss_rows(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch plus its `loss_rows` (`response_rows` of its masks), as training feeds it."""
    rows = response_rows(np.asarray(batch["loss_mask"]), np.asarray(batch["attention_mask"]))
    return {**batch, "loss_rows": rows}


class BatchIterator:
    """Endless batches over epochs; `state()` / `restore()` save and resume the position."""

    def __init__(self, examples: Sequence[ChatExample], batch_size: int, pad_id: int, *,
                 seed: int = 0, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 drop_remainder: bool = False):
        if not examples:
            raise ValueError("BatchIterator needs at least one example")
        self.examples, self.batch_size, self.pad_id = list(examples), batch_size, pad_id
        self.seed, self.buckets, self.drop_remainder = seed, tuple(buckets), drop_remainder
        self._lengths = [len(e) for e in self.examples]
        self.epoch, self.step = 0, 0
        self._plan = self._make_plan(0)
        if not self._plan:
            raise ValueError(f"no full batch of {batch_size} (drop_remainder with "
                             f"{len(self.examples)} examples)")

    def _make_plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        return plan_epoch(self._lengths, self.batch_size, self.buckets, self.seed, epoch,
                          self.drop_remainder)

    @property
    def steps_per_epoch(self) -> int:
        return len(self._plan)

    def state(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "step": self.step}

    def restore(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, iterator has "
                             f"seed {self.seed}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._plan = self._make_plan(self.epoch)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.step >= len(self._plan):
            self.epoch, self.step = self.epoch + 1, 0
            self._plan = self._make_plan(self.epoch)
        length, indices = self._plan[self.step]
        self.step += 1
        return with_loss_rows(collate(self.examples, indices, length, self.batch_size,
                                      self.pad_id))
