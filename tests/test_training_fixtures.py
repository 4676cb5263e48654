"""Tiny model, batches and a resumable iterator shared by the training tests."""

from __future__ import annotations

import numpy as np

from research.models.config import ModelConfig
from research.models.lora import LoRAConfig
from research.models.transformer import init_decoder

TINY = ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8)


def tiny_model(lora: bool = True, seed: int = 0):
    """A random tiny decoder, optionally with rank-4 adapters."""
    return init_decoder(TINY, seed=seed, lora=LoRAConfig(rank=4) if lora else None)


def make_batch(rows: int = 8, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Random batch: left/right padding mixed, prompts then responses of varying length
    (so the number of loss tokens differs between rows)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, TINY.vocab_size, size=(rows, length)).astype(np.int32)
    attention = np.zeros((rows, length), np.int32)
    loss = np.zeros((rows, length), np.int32)
    for r in range(rows):
        real = int(rng.integers(length // 2, length + 1))
        start = 0 if r % 2 else length - real  # odd rows right-padded, even left-padded
        attention[r, start:start + real] = 1
        prompt = int(rng.integers(1, real - 1))
        loss[r, start + prompt:start + real] = 1
    ids = np.where(attention == 1, ids, 0).astype(np.int32)
    return {"tokens": ids, "attention_mask": attention, "loss_mask": loss}


class ListIterator:
    """Cycles through pre-made batches; its position is a JSON-able dict.

    `fail_after` raises after that many batches, to simulate a crash mid-run.
    """

    def __init__(self, batches: list[dict[str, np.ndarray]], fail_after: int | None = None):
        self.batches, self.index, self.fail_after, self.served = batches, 0, fail_after, 0

    def __next__(self) -> dict[str, np.ndarray]:
        if self.fail_after is not None and self.served >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        self.served += 1
        return batch

    def state(self) -> dict:
        return {"index": self.index}

    def restore(self, state: dict) -> None:
        self.index = int(state["index"])


def test_list_iterator_position_round_trips():
    batches = [make_batch(seed=s) for s in range(3)]
    it = ListIterator(batches)
    next(it)
    saved = it.state()
    expected = next(it)
    other = ListIterator(batches)
    other.restore(saved)
    np.testing.assert_array_equal(next(other)["tokens"], expected["tokens"])


def test_batches_have_uneven_loss_tokens_and_both_paddings():
    batch = make_batch()
    counts = batch["loss_mask"].sum(axis=1)
    assert len(set(counts.tolist())) > 1
    assert (batch["attention_mask"][:, 0] == 0).any() and (batch["attention_mask"][:, -1] == 0).any()
    assert not (batch["loss_mask"] & (1 - batch["attention_mask"])).any()
