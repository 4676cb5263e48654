"""Self-Inf / Self-Inf-N: vmapped scores equal per-example grads, chunking and padding
invariance, length normalization, trivial-answer filter, deterministic selection."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.data.chat import ChatExample
from research.data.rows import Row
from research.outliers import selection as sel
from research.outliers.self_influence import (Scores, make_scorer, make_single_scorer,
                                              normalized_self_influence, plan_chunks,
                                              response_window,
                                              score_examples)
from research.training.losses import per_example_mean_nll
from research.training.state import split_model
from tests.test_training_fixtures import TINY, tiny_model

BUCKETS = (16, 32)
LENGTH = 12  # one length (one reference compile), padded to 16 by the scorer


def _examples(n: int = 7, seed: int = 0, max_answer: int = LENGTH - 1) -> list[ChatExample]:
    """Unpadded examples with 1..11 answer tokens (compiles are what makes tests slow)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = LENGTH
        answer = int(rng.integers(1, max_answer + 1))
        mask = np.zeros(length, bool)
        mask[length - answer:] = True
        out.append(ChatExample(rng.integers(3, TINY.vocab_size, length).astype(np.int32),
                               mask, f"ex:{i}", False))
    return out


def _model_with_live_adapters():
    """Tiny LoRA model whose B matrices are non-zero, so A receives gradient too."""
    model = tiny_model(lora=True)
    for i, (name, var) in enumerate(nnx.iter_graph(model)):
        if isinstance(var, nnx.Variable) and name and str(name[-1]).endswith("_b"):
            shape = var.get_value().shape
            var.set_value(jnp.asarray(0.1 * np.random.default_rng(i).normal(size=shape),
                                      jnp.float32))
    return model


def _reference_scores(graphdef, trainable, frozen, examples) -> np.ndarray:
    """Loop of single-example jax.grad at each example's own length (no padding)."""
    @jax.jit
    def grad(params, tokens, mask):
        def loss(p):
            model = nnx.merge(graphdef, p, frozen)
            batch = {"tokens": tokens[None], "attention_mask": jnp.ones_like(tokens)[None],
                     "loss_mask": mask[None]}
            return per_example_mean_nll(model(batch["tokens"]).logits, batch)[0][0]
        return jax.grad(loss)(params)
    out = []
    for ex in examples:
        grads = grad(trainable, jnp.asarray(ex.tokens), jnp.asarray(ex.loss_mask))
        out.append(sum(float(np.sum(np.square(np.asarray(g, np.float64))))
                       for g in jax.tree.leaves(grads)))
    return np.asarray(out)


@pytest.fixture(scope="module")
def lora_case():
    """(split model, vmapped scorer, examples, reference Self-Inf) shared by the tests."""
    graphdef, trainable, frozen = split_model(_model_with_live_adapters(), "lora")
    examples = _examples(9, seed=1)
    expected = _reference_scores(graphdef, trainable, frozen, examples)
    return graphdef, trainable, frozen, make_scorer(graphdef), examples, expected


def test_vmapped_scores_match_single_example_grads(lora_case):
    graphdef, trainable, frozen, scorer, examples, expected = lora_case
    scores = score_examples(scorer, trainable, frozen, examples, chunk_size=4, pad_id=0,
                            buckets=BUCKETS)
    assert np.all(expected > 0)
    np.testing.assert_allclose(scores.self_inf, expected, rtol=2e-4)
    np.testing.assert_array_equal(scores.answer_tokens,
                                  [int(ex.loss_mask[1:].sum()) for ex in examples])


def test_full_mode_scores_match_single_example_grads_and_differ_from_lora(lora_case):
    """The config's parameter subset ("full" here) is the one differentiated; answers of at
    most 7 tokens also exercise a response window (8) shorter than the sequence."""
    model = _model_with_live_adapters()
    graphdef, trainable, frozen = split_model(model, "full")
    examples = _examples(4, seed=1, max_answer=7)
    scores = score_examples(make_scorer(graphdef), trainable, frozen, examples,
                            chunk_size=4, pad_id=0, buckets=BUCKETS)
    expected = _reference_scores(graphdef, trainable, frozen, examples)
    np.testing.assert_allclose(scores.self_inf, expected, rtol=2e-4)
    lora_graphdef, lora_params, lora_frozen = split_model(model, "lora")
    lora_scores = _reference_scores(lora_graphdef, lora_params, lora_frozen, examples)
    assert not np.allclose(scores.self_inf, lora_scores, rtol=1e-2)


def test_chunking_and_single_loop_agree(lora_case):
    graphdef, trainable, frozen, scorer, examples, expected = lora_case
    runs = [score_examples(scorer, trainable, frozen, examples, chunk_size=c, pad_id=0,
                           buckets=BUCKETS) for c in (4, 3)]
    runs.append(score_examples(make_single_scorer(graphdef), trainable, frozen, examples,
                               chunk_size=1, pad_id=0, buckets=BUCKETS))
    np.testing.assert_allclose(runs[0].self_inf, expected, rtol=2e-4)
    for other in runs[1:]:
        np.testing.assert_allclose(other.self_inf, runs[0].self_inf, rtol=1e-5)
        np.testing.assert_allclose(other.loss, runs[0].loss, rtol=1e-5)
        np.testing.assert_array_equal(other.answer_tokens, runs[0].answer_tokens)


def test_plan_chunks_covers_every_example_once():
    lengths = [5, 30, 9, 16, 17, 2, 8]
    plan = plan_chunks(lengths, 2, BUCKETS)
    assert [(pad, idx.tolist()) for pad, idx in plan] == [
        (16, [0, 2]), (16, [3, 5]), (16, [6]), (32, [1, 4])]
    seen = np.concatenate([idx for _, idx in plan])
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    assert all(len(idx) <= 2 and all(lengths[i] <= pad for i in idx) for pad, idx in plan)
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        plan_chunks([33], 2, BUCKETS)


@pytest.mark.parametrize("counts,length,window", [
    ([1, 3], 16, 8), ([8], 64, 8), ([9, 2], 64, 16), ([40], 64, 63), ([11], 16, 15)])
def test_response_window_covers_every_answer(counts, length, window):
    assert response_window(counts, length) == window


def test_example_without_answer_tokens_is_rejected():
    graphdef, trainable, frozen = split_model(tiny_model(), "lora")
    bad = ChatExample(np.arange(3, 8, dtype=np.int32), np.zeros(5, bool), "empty:0", False)
    with pytest.raises(ValueError, match="no answer token"):
        score_examples(make_scorer(graphdef), trainable, frozen, [bad], chunk_size=1,
                       pad_id=0, buckets=BUCKETS)


def test_length_normalization_on_hand_made_values():
    self_inf = np.array([0.0, np.e - 1, 100.0, 100.0])
    tokens = np.array([0, 0, 1, 99])
    got = np.asarray(normalized_self_influence(self_inf, tokens))
    want = [0.0, 1.0, np.log(101) + np.log(2), np.log(101) + np.log(100)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # a short answer with a much larger raw score ranks lower once normalized
    raw = np.array([50.0, 10.0])
    n = np.array([1, 60])
    assert sel.rank_by_score(raw)[0] == 0
    assert sel.rank_by_score(np.asarray(normalized_self_influence(raw, n)))[0] == 1


@pytest.mark.parametrize("text,trivial", [
    ("", True), (None, True), ("   ", True), ("Yes", True), (" no. ", True), ("NO!", True),
    ("Okay", True), ("I don't know.", True), ("Yes, because 3 > 2.", False),
    ("Nobody", False), ("42", False), ("positive", False),
])
def test_trivial_answer_filter(text, trivial):
    assert sel.is_trivial(text) is trivial


def test_select_top_pool_filter_and_k():
    scores = np.array([9.0, 8.0, 7.0, 7.0, 6.0, 1.0])
    answers = ["yes", "A long answer.", "no", "Another.", "Third.", "Fourth."]
    s = sel.select_top("n", scores, answers, k=2, pool_size=4)
    assert s.indices.tolist() == [1, 3]
    assert (s.considered, s.dropped_trivial, s.short_by) == (4, 2, 0)
    short = sel.select_top("n", scores, answers, k=3, pool_size=3)
    assert short.indices.tolist() == [1] and short.short_by == 2
    plain = sel.select_top("raw", scores, answers, k=2, pool_size=None, drop_trivial=False)
    assert plain.indices.tolist() == [0, 1]
    with pytest.raises(ValueError, match="pool_size"):
        sel.select_top("n", scores, answers, k=5, pool_size=4)
    with pytest.raises(ValueError, match="non-finite"):
        sel.select_top("n", np.array([1.0, np.nan]), ["a", "b"], k=1)


def test_selection_is_deterministic():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(500), 2)  # many ties
    answers = [("yes" if i % 7 == 0 else f"answer {i}") for i in range(500)]
    a = sel.select_top("n", scores, answers, k=50, pool_size=120)
    b = sel.select_top("n", scores.copy(), list(answers), k=50, pool_size=120)
    np.testing.assert_array_equal(a.indices, b.indices)
    tied = np.flatnonzero(scores == scores[a.indices[0]])
    assert a.indices[0] == tied.min()  # ties go to the lower index
    r1, r2 = sel.select_random("r", 500, k=50, seed=3), sel.select_random("r", 500, k=50, seed=3)
    np.testing.assert_array_equal(r1.indices, r2.indices)
    assert len(set(r1.indices.tolist())) == 50
    assert not np.array_equal(r1.indices, sel.select_random("r", 500, k=50, seed=4).indices)


def test_saved_selection_holds_scores_and_lengths(tmp_path):
    rows = [Row(prompt=f"q{i}", response=r, kind="benign", source="t", uid=f"t:{i}")
            for i, r in enumerate(["yes", "A fine answer", "Two words"])]
    scores = Scores(np.array([3.0, 2.0, 1.0]), np.array([2, 4, 3]), np.array([0.5, 0.4, 0.3]))
    chosen = sel.select_top("n", scores.self_inf_n, [r.response for r in rows], k=2,
                            pool_size=3)
    path = tmp_path / "sets" / "self_inf_n.jsonl"
    summary = sel.save_selection(path, chosen, rows, scores)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["uid"] for r in records] == ["t:1", "t:2"]
    assert records[0]["answer_tokens"] == 4 and records[0]["self_inf"] == 2.0
    np.testing.assert_allclose(records[0]["self_inf_n"], np.log(3) + np.log(5), rtol=1e-6)
    assert summary["answer_tokens"]["median"] == 3.5 and summary["dropped_trivial"] == 1
    with pytest.raises(FileExistsError):
        sel.save_selection(path, chosen, rows, scores)


def test_outlier_sets_normalization_moves_away_from_short_answers():
    """Raw Self-Inf picks the short, high-gradient answers; Self-Inf-N trades them for long
    ones with a smaller raw score, and drops the trivial ones."""
    answers = ["yes", "no", "ok", "Paris.", "A long worked answer " * 5, "Another long one " * 6]
    scores = Scores(np.array([90.0, 80.0, 70.0, 60.0, 20.0, 15.0]),
                    np.array([2, 2, 2, 3, 40, 50]), np.zeros(6))
    sets = sel.outlier_sets(scores, answers, k=2, pool_size=6, seed=0)
    assert sets["self_inf_raw"].indices.tolist() == [0, 1]
    assert sets["self_inf_n"].indices.tolist() == [4, 5]
    assert sets["self_inf_n"].dropped_trivial == 3  # counted over the whole top pool
    wide = sel.outlier_sets(scores, answers, k=4, pool_size=6)["self_inf_n"]
    assert wide.indices.tolist() == [4, 5, 3] and wide.short_by == 1
    assert len(sets["random"].indices) == 2
    filtered = sel.outlier_sets(scores, answers, k=2, pool_size=6, filter_raw=True)
    assert filtered["self_inf_raw"].indices.tolist() == [3, 4]
