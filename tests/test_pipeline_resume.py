"""train_stage(resume=True) of a method that carries its own state (accelerated Vaccine):
an interrupted stage continued from its checkpoint ends with the uninterrupted weights."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file

from research.data.rows import Row
from research.pipeline import stages
from research.pipeline.stages import IncompleteStageError, train_stage
from tests.pipeline_fixtures import save_tiny_model, tiny_study_config

ROWS = [Row(prompt=f"Question {i}: how do I do thing {i}?", response=f"Answer {i}: do it.",
            kind="benign", source="toy", uid=f"toy:{i}") for i in range(8)]


class FailingIterator(stages.BatchIterator):
    """The stage's iterator, crashing while fetching its 6th batch."""

    def __next__(self):
        self.served = getattr(self, "served", 0) + 1
        if self.served > 5:
            raise KeyboardInterrupt("simulated interruption")
        return super().__next__()


def _weights(entry) -> dict[str, np.ndarray]:
    return {k: v for f in sorted((entry / "hf").glob("*.safetensors"))
            for k, v in load_file(f).items()}


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_interrupted_accelerated_vaccine_stage_resumes_to_the_same_weights(
        tokenizer, tmp_path, monkeypatch):
    cfg = tiny_study_config(save_tiny_model(tmp_path / "model", tokenizer), tmp_path)
    block = cfg.align
    block.update(method="vaccine", steps=6, save_every=2)
    block.method_config = ml_collections.ConfigDict(dict(rho=2.0, site="attn_out", tau=3,
                                                         remat=False))
    run = lambda root, **kw: train_stage(  # noqa: E731
        label="align_vaccine", source=cfg.model.source, source_key="tiny", rows=ROWS,
        stage_cfg=block, model_cfg=cfg.model, cache_root=root, progress=False, **kw)

    _, straight, _ = run(tmp_path / "a")
    with monkeypatch.context() as patch:
        patch.setattr(stages, "BatchIterator", FailingIterator)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "b")
    with pytest.raises(IncompleteStageError):
        run(tmp_path / "b")
    saved = lambda entry: sorted(  # noqa: E731
        int(p.name) for p in (entry / "orbax").iterdir() if p.name.isdigit())
    unfinished, = [p for p in (tmp_path / "b" / "stages").iterdir() if p.is_dir()]
    assert saved(unfinished) == [2, 4]  # where the interrupted run got to
    _, resumed, summary = run(tmp_path / "b", resume=True)

    assert summary["steps"] == 6 and not summary["cache_hit"]
    assert saved(resumed) == [6]  # finished: only the final checkpoint is kept
    metrics = _lines(resumed / "metrics.jsonl")
    assert [m["eps_recomputed"] for m in metrics] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert [m["loss"] for m in metrics] == [m["loss"] for m in _lines(straight /
                                                                       "metrics.jsonl")]
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_method_supplies_the_state_its_step_starts_from():
    import optax

    from research.pipeline import registry
    from research.training.state import TrainState, split_model
    from research.training.vaccine import VaccineState
    from tests.test_training_fixtures import tiny_model

    graphdef, params, _ = split_model(tiny_model(), "lora")
    ctx = lambda **m: registry.StepContext(  # noqa: E731
        graphdef, optax.sgd(0.1), optax.constant_schedule(0.1), ml_collections.ConfigDict(m))
    _, plain = registry.build_method("vaccine", ctx(tau=1), params, 0)
    _, fast = registry.build_method("vaccine", ctx(tau=3), params, 0)
    assert type(plain) is TrainState and type(fast) is VaccineState
    assert fast.eps.size == 0 and int(fast.eps_age) == 3  # stale: first step computes eps
    try:
        registry.register_method("toy_game", init_state=lambda c, p, s: {"step": s, "p": p})(
            lambda c: "step")
        step, state = registry.build_method("toy_game", ctx(), params, 7)
        assert step == "step" and state["step"] == 7
    finally:
        registry.ALIGNMENT_METHODS.pop("toy_game", None)
        registry.STATE_INITS.pop("toy_game", None)
