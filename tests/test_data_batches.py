"""Bucketed padded batches, seeded order, save/restore of the iterator position."""

from __future__ import annotations

import numpy as np
import pytest

from research.data.batches import BatchIterator, bucket_for, plan_epoch
from research.data.chat import ChatExample


def _examples(lengths):
    return [ChatExample(np.arange(1, n + 1, dtype=np.int32),
                        np.arange(n) >= n // 2, f"e{i}", False)
            for i, n in enumerate(lengths)]


def test_batches_are_padded_to_buckets_with_full_rows():
    ex = _examples([5, 9, 30, 31, 40, 70, 3])
    it = BatchIterator(ex, batch_size=2, pad_id=0, seed=0, buckets=(16, 32, 64, 128))
    seen = []
    for _ in range(it.steps_per_epoch):
        b = next(it)
        T = b["tokens"].shape[1]
        assert b["tokens"].shape == b["attention_mask"].shape == b["loss_mask"].shape == (2, T)
        assert b["tokens"].dtype == np.int32 and b["loss_mask"].dtype == bool
        for row in range(2):
            n = int(b["attention_mask"][row].sum())
            if n:
                assert bucket_for(n, (16, 32, 64, 128)) == T
                assert b["tokens"][row, :n].tolist() == list(range(1, n + 1))
                assert not b["tokens"][row, n:].any() and not b["loss_mask"][row, n:].any()
                assert b["loss_mask"][row, :n].tolist() == [i >= n // 2 for i in range(n)]
                seen.append(n)
    assert sorted(seen) == [3, 5, 9, 30, 31, 40, 70]  # every example exactly once per epoch


def test_order_depends_on_seed_and_epoch_only():
    lengths = [10] * 40
    a = [c.tolist() for _, c in plan_epoch(lengths, 4, (32,), seed=1, epoch=0)]
    assert a == [c.tolist() for _, c in plan_epoch(lengths, 4, (32,), seed=1, epoch=0)]
    assert a != [c.tolist() for _, c in plan_epoch(lengths, 4, (32,), seed=2, epoch=0)]
    assert a != [c.tolist() for _, c in plan_epoch(lengths, 4, (32,), seed=1, epoch=1)]
    assert len(plan_epoch([10] * 7, 4, (32,), 0, 0, drop_remainder=True)) == 1


def test_save_and_restore_resumes_the_exact_stream():
    ex = _examples(list(range(3, 60, 2)))
    it = BatchIterator(ex, batch_size=4, pad_id=0, seed=7, buckets=(16, 32, 64))
    for _ in range(it.steps_per_epoch + 2):  # into the second epoch
        next(it)
    state = dict(it.state())
    expected = [next(it)["tokens"] for _ in range(it.steps_per_epoch)]
    fresh = BatchIterator(ex, batch_size=4, pad_id=0, seed=7, buckets=(16, 32, 64))
    fresh.restore(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["tokens"], want)
    with pytest.raises(ValueError, match="seed"):
        BatchIterator(ex, 4, 0, seed=8).restore(state)


def test_too_long_example_is_an_error():
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        BatchIterator(_examples([100]), 2, 0, buckets=(32, 64))
