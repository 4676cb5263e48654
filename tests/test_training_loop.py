"""Loop bookkeeping: exact interrupt-and-resume (also of a method's own state), the NaN
guard, metrics.jsonl, checkpoints, hooks."""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.training.checkpointing import Checkpointer
from research.training.ema import parameter_ema
from research.training.loop import CurveRecorder, NonFiniteLossError, train
from research.training.state import init_train_state, split_model
from research.training.steps import make_sft_step, make_train_step, sft_grad_fn
from research.training.vaccine import (VaccineState, make_accelerated_vaccine_step,
                                       vaccine_initial_state)
from tests.test_training_fixtures import ListIterator, make_batch, tiny_model

STEPS = 6
BATCHES = [make_batch(rows=4, seed=s) for s in range(4)]


@pytest.fixture(scope="module")
def setup():
    graphdef, params, frozen = split_model(tiny_model(), "lora")
    opt = optax.chain(optax.adamw(3e-2), parameter_ema(0.9, "track"))
    step = make_sft_step(graphdef, opt, accum_steps=2)
    return step, params, frozen, opt


def _fresh(setup):
    step, params, frozen, opt = setup
    return step, init_train_state(jax.tree.map(jnp.copy, params), opt, seed=3), frozen


def test_interrupt_and_resume_gives_the_uninterrupted_result(setup, tmp_path):
    step, state, frozen = _fresh(setup)
    straight = train(step, state, frozen, ListIterator(BATCHES), num_steps=STEPS,
                     metrics_path=tmp_path / "a" / "metrics.jsonl", progress=False)

    ckpt = Checkpointer(tmp_path / "b" / "ckpt", save_every=2, async_save=True)
    step, state, frozen = _fresh(setup)
    with pytest.raises(KeyboardInterrupt):  # crashes while fetching the 6th batch
        train(step, state, frozen, ListIterator(BATCHES, fail_after=5), num_steps=STEPS,
              metrics_path=tmp_path / "b" / "metrics.jsonl", checkpointer=ckpt, progress=False)
    assert ckpt.latest_step() == 4
    step, state, frozen = _fresh(setup)
    resumed = train(step, state, frozen, ListIterator(BATCHES), num_steps=STEPS,
                    metrics_path=tmp_path / "b" / "metrics.jsonl", checkpointer=ckpt,
                    resume=True, progress=False)
    assert int(resumed.step) == STEPS and ckpt.latest_step() == STEPS
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)  # params, Adam moments, EMA, key

    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))
    reference = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["loss"] for r in lines], [r["loss"] for r in reference])
    assert {"loss", "grad_norm", "lr", "tokens", "tokens_per_s", "step_time_s"} <= set(lines[0])
    ckpt.close()


def test_resume_before_the_first_checkpoint_starts_over_and_drops_the_partial_log(setup,
                                                                                 tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", save_every=100)  # killed before any save
    step, state, frozen = _fresh(setup)
    with pytest.raises(KeyboardInterrupt):
        train(step, state, frozen, ListIterator(BATCHES, fail_after=3), num_steps=STEPS,
              metrics_path=tmp_path / "metrics.jsonl", checkpointer=ckpt, progress=False)
    assert ckpt.latest_step() is None and (tmp_path / "metrics.jsonl").read_text()
    step, state, frozen = _fresh(setup)
    resumed = train(step, state, frozen, ListIterator(BATCHES), num_steps=STEPS,
                    metrics_path=tmp_path / "metrics.jsonl", checkpointer=ckpt, resume=True,
                    progress=False)
    assert int(resumed.step) == STEPS
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))
    ckpt.close()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(setup, tmp_path):
    step, state, frozen = _fresh(setup)
    poisoned = [dict(b) for b in BATCHES]
    # Out-of-range token ids make the gathered logit NaN in the loss on step 4.
    poisoned[3] = dict(poisoned[3], tokens=np.full_like(poisoned[3]["tokens"], 10_000))
    ckpt = Checkpointer(tmp_path / "ckpt", save_every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 4.*last good checkpoint is step 2"):
        train(step, state, frozen, ListIterator(poisoned), num_steps=STEPS,
              metrics_path=tmp_path / "metrics.jsonl", checkpointer=ckpt, progress=False)
    assert ckpt.latest_step() == 2
    restored, position = ckpt.restore(_fresh(setup)[1])
    assert position == {"index": 2}
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))
    ckpt.close()


def test_an_infinite_loss_stops_like_a_nan(setup, tmp_path):
    """An overflowing loss (inf, finite gradients) is caught as well: the step's finite
    flag covers the loss itself, not only the gradient norm."""
    _, params, frozen, opt = setup
    plain = sft_grad_fn(split_model(tiny_model(), "lora")[0])

    def overflowing(params, frozen, batch, key):  # inf loss on a batch whose row 0 is all 1s
        grads, stats = plain(params, frozen, batch, key)
        scale = jnp.where(jnp.all(batch["tokens"][0] == 1), jnp.inf, 1.0)
        return grads, {**stats, "loss_sum": stats["loss_sum"] * scale}

    step = make_train_step(overflowing, opt)
    marked = [dict(b) for b in BATCHES]
    tokens = marked[2]["tokens"].copy()
    tokens[0] = 1
    marked[2] = dict(marked[2], tokens=tokens)
    state = init_train_state(jax.tree.map(jnp.copy, params), opt, seed=3)
    with pytest.raises(NonFiniteLossError, match=r"loss inf .* at step 3.*no checkpoint"):
        train(step, state, frozen, ListIterator(marked), num_steps=STEPS,
              metrics_path=tmp_path / "metrics.jsonl", progress=False)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]  # the bad step is not logged as progress


def test_an_existing_metrics_log_is_not_overwritten(setup, tmp_path):
    step, state, frozen = _fresh(setup)
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(FileExistsError, match="never overwritten"):
        train(step, state, frozen, ListIterator(BATCHES), num_steps=1, metrics_path=log,
              progress=False)


def test_accelerated_vaccine_resumes_exactly_and_hooks_keep_one_curve(tmp_path):
    """A method's own state (VaccineState: eps reused for tau steps, shaped by the batch)
    restores into its initial state's template; a curve hook's points past the restored
    step are replaced, so the curve equals the uninterrupted run's."""
    graphdef, params, frozen = split_model(tiny_model(), "lora")
    opt = optax.adam(3e-2)
    step = make_accelerated_vaccine_step(graphdef, opt, rho=2.0, tau=3)
    batches = [make_batch(rows=4, length=12, seed=s) for s in range(3)]

    def fresh():
        return vaccine_initial_state(
            init_train_state(jax.tree.map(jnp.copy, params), opt, seed=0), tau=3)

    def curve(folder):
        return CurveRecorder(lambda s: {"p": float(jax.tree.leaves(s.params)[0].sum()),
                                        "eps_age": int(s.eps_age)},
                             folder / "curve.jsonl", every=2, last_step=STEPS)

    straight = train(step, fresh(), frozen, ListIterator(batches), num_steps=STEPS,
                     metrics_path=tmp_path / "a" / "metrics.jsonl", progress=False,
                     hooks=[curve(tmp_path / "a")])
    ckpt = Checkpointer(tmp_path / "b" / "ckpt", save_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(step, fresh(), frozen, ListIterator(batches, fail_after=5), num_steps=STEPS,
              metrics_path=tmp_path / "b" / "metrics.jsonl", checkpointer=ckpt,
              progress=False, hooks=[curve(tmp_path / "b")])
    assert ckpt.latest_step() == 4  # eps computed at step 4, reused at 5 and 6
    resumed = train(step, fresh(), frozen, ListIterator(batches), num_steps=STEPS,
                    metrics_path=tmp_path / "b" / "metrics.jsonl", checkpointer=ckpt,
                    resume=True, progress=False, hooks=[curve(tmp_path / "b")])
    ckpt.close()
    assert isinstance(resumed, VaccineState) and resumed.eps.shape == (4, 2, 12, 32)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)  # params, moments, eps, eps age
    read = lambda f: [json.loads(x) for x in f.read_text().splitlines()]  # noqa: E731
    assert [r["eps_recomputed"] for r in read(tmp_path / "b" / "metrics.jsonl")] == [
        1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    points = read(tmp_path / "b" / "curve.jsonl")
    assert [p["step"] for p in points] == [0, 2, 4, 6]
    assert points == read(tmp_path / "a" / "curve.jsonl")


class _Shaped(NamedTuple):
    step: jax.Array
    fixed: jax.Array
    shaped: jax.Array


def test_checkpoint_placeholders_take_the_saved_shape_and_nothing_else_does(tmp_path):
    state = _Shaped(jnp.asarray(1), jnp.ones(3), jnp.arange(6.0).reshape(2, 3))
    with Checkpointer(tmp_path / "ckpt", async_save=False) as ckpt:
        ckpt.save(state, {"index": 1})
    with Checkpointer(tmp_path / "ckpt") as ckpt:  # as a new process would open it
        restored, _ = ckpt.restore(state._replace(shaped=jnp.zeros((0, 0))))
        assert isinstance(restored, _Shaped)
        np.testing.assert_array_equal(restored.shaped, state.shaped)
        with pytest.raises(ValueError, match="shape"):
            ckpt.restore(state._replace(fixed=jnp.ones(4)))
