"""Bucketed padded batches, seeded order, save/restore of the iterator position."""

from __future__ import annotations

import numpy as np
import pytest

from research.data.batches import BatchIterator, bucket_for, plan_epoch, response_rows
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
        np.testing.assert_array_equal(b["loss_rows"],
                                      response_rows(b["loss_mask"], b["attention_mask"]))
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


def test_response_rows_list_every_position_that_predicts_a_response_token():
    T = 40
    loss = np.zeros((3, T), bool)
    attention = np.zeros((3, T), bool)
    attention[0, :30], loss[0, 10:30] = True, True    # right-padded: positions 9..28
    attention[1, 5:], loss[1, 20:] = True, True       # left-padded: positions 19..38
    loss[1, 25] = False                               # a hole in the response
    rows = response_rows(loss, attention)             # row 2 is an empty padding row
    assert rows.dtype == np.int32 and rows.shape == (3, 32)  # 20 rounded up to 16s
    assert rows[0].tolist() == list(range(9, 29)) + [T - 1] * 12
    assert rows[1].tolist() == [p for p in range(19, 39) if p != 24] + [T - 1] * 13
    assert (rows[2] == T - 1).all()
    # a loss mark on padding predicts nothing; the width never exceeds T-1
    full = np.ones((2, 8), bool)
    assert response_rows(full, full).tolist() == [list(range(7))] * 2
    assert response_rows(full, np.zeros((2, 8), bool)).tolist() == [[7] * 7] * 2
