"""The thin training loop: feed batches, run the jitted step, log, checkpoint, guard.

All math lives in the step; this loop only does bookkeeping: a tqdm bar (tokens/s,
loss, ETA), one JSON line per step in `metrics.jsonl`, periodic and final Orbax
checkpoints with the data iterator's position, exact resume, and a stop with a clear
error on a NaN/inf loss (the bad state is never saved, so the newest checkpoint is the
last good one). The state is whatever the step carries (a `TrainState`, or a method's
own state with a `step` field); a resumed run restores into the state it is given.
Anything else to do during training (a drift curve, periodic evaluation) is a hook
`hook(step, state)`, called on the starting state and after every update.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from research.training.checkpointing import Checkpointer
from research.training.sharding import shard_batch
from research.training.state import TrainState

StepFn = Callable[[Any, nnx.State, dict], tuple[Any, dict]]
Hook = Callable[[int, Any], None]


class ResumableIterator(Protocol):
    """A batch iterator whose position can be saved and restored (JSON-able dict)."""

    def __next__(self) -> dict[str, np.ndarray]: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


class CurveRecorder:
    """A hook appending `{"step", **fn(state)}` to a JSON-lines file every `every` steps
    and at `last_step` (e.g. a drift curve). Its first call sees the starting state; on
    a resumed run it first drops the points past the restored step, so the file ends up
    as an uninterrupted run's."""

    def __init__(self, fn: Callable[[Any], dict], path: str | Path, *, every: int,
                 last_step: int):
        if every < 1:
            raise ValueError(f"a curve's period must be >= 1 step, got {every}")
        self.fn, self.path, self.every, self.last_step = fn, Path(path), every, last_step
        self.points: list[dict] | None = None

    def __call__(self, step: int, state: Any) -> None:
        if self.points is None:
            old = self.path.read_text().splitlines() if self.path.exists() else []
            self.points = [p for p in map(json.loads, filter(str.strip, old))
                           if p["step"] < step]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(p) + "\n" for p in self.points))
        if step % self.every and step != self.last_step:
            return
        point = {"step": step, **self.fn(state)}
        self.points.append(point)
        with self.path.open("a") as f:
            f.write(json.dumps(point) + "\n")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient; the newest checkpoint is still good."""


def _prepare_metrics_file(path: Path, resume_step: int | None) -> None:
    """Refuse to overwrite a finished log; on resume drop lines past the restored step."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if resume_step is None:
        if path.stat().st_size:
            raise FileExistsError(f"{path} already holds metrics; resume the run or pick a "
                                  "new run folder (runs are never overwritten silently)")
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= resume_step]
    path.write_text("".join(line + "\n" for line in kept))


def train(
    step_fn: StepFn,
    state: TrainState | Any,
    frozen: nnx.State,
    data: ResumableIterator,
    *,
    num_steps: int,
    metrics_path: str | Path,
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
    mesh: Mesh | None = None,
    progress: bool = True,
    desc: str = "train",
    hooks: Sequence[Hook] = (),
) -> TrainState | Any:
    """Run `step_fn` until `state.step == num_steps`; returns the final state.

    With `resume=True` and a checkpoint present, the state (with `state` as the
    template) and the iterator's position are restored first, so the run continues
    exactly where the checkpoint left it; with no checkpoint yet it starts from step 0
    and drops the interrupted run's metric lines. Each hook is called as `hook(step, state)` on
    the starting (or restored) state and after every update; it decides its own period.
    """
    metrics_path = Path(metrics_path)
    resume_step = None
    if resume:  # no checkpoint yet (killed before the first save): start over from 0
        resume_step = 0
        if checkpointer is not None and checkpointer.latest_step() is not None:
            state, position = checkpointer.restore(state)
            data.restore(position)
            resume_step = int(jax.device_get(state.step))
    _prepare_metrics_file(metrics_path, resume_step)

    start = int(jax.device_get(state.step))
    bar = tqdm(total=num_steps, initial=start, desc=desc, disable=not progress,
               unit="step", dynamic_ncols=True)
    clock = time.perf_counter()
    position = data.state()
    try:
        for hook in hooks:
            hook(start, state)
        with metrics_path.open("a") as log:
            for _ in range(start, num_steps):
                batch = next(data)
                position = data.state()
                if mesh is not None:
                    batch = shard_batch(mesh, batch)
                state, metrics = step_fn(state, frozen, batch)
                metrics = {k: v.item() for k, v in jax.device_get(metrics).items()}
                step = int(jax.device_get(state.step))
                now = time.perf_counter()
                elapsed, clock = now - clock, now
                if not metrics.pop("finite"):
                    last = checkpointer.latest_step() if checkpointer is not None else None
                    where = (f"the last good checkpoint is step {last} in "
                             f"{checkpointer.directory}" if last is not None
                             else "no checkpoint was written yet")
                    raise NonFiniteLossError(
                        f"non-finite training loss {metrics['loss']} (grad norm "
                        f"{metrics['grad_norm']}) at step {step}; stopped, {where}")
                record = {"step": step, **metrics, "step_time_s": elapsed,
                          "tokens_per_s": metrics["tokens"] / max(elapsed, 1e-9)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                                tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
                bar.update(1)
                for hook in hooks:
                    hook(step, state)
                if checkpointer is not None and checkpointer.due(step):
                    checkpointer.save(state, position)
        if checkpointer is not None:
            checkpointer.save(state, position)
            checkpointer.wait()
    finally:
        bar.close()
    return state
