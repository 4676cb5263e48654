"""Orbax checkpoints of the train state plus the data iterator's position.

Each checkpoint `<dir>/<step>/` holds `state` (step, trainable params, optimiser state,
PRNG key data) and `data` (the caller's JSON-able iterator position), written by one
Orbax `CheckpointManager`. Orbax writes into a temporary folder and renames it when
complete, so a crash mid-save never leaves a checkpoint that looks finished; restore
only ever sees committed steps. The frozen base weights are not stored: they come from
the model the run started from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from research.training.state import TrainState


def _abstract(template: Any) -> Any:
    """Shape/dtype/sharding skeleton used to restore onto the template's devices."""
    def leaf(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return jax.tree.map(leaf, template)


class Checkpointer:
    """Periodic and final checkpoints in one folder; keeps the newest `max_to_keep`."""

    def __init__(self, directory: str | Path, *, save_every: int = 0, max_to_keep: int = 2,
                 async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.save_every = int(save_every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def due(self, step: int) -> bool:
        """Whether the periodic schedule asks for a checkpoint after `step` updates."""
        return self.save_every > 0 and step > 0 and step % self.save_every == 0

    def save(self, state: TrainState, data_position: dict[str, Any]) -> None:
        """Checkpoint `state` under its step number (no-op if that step already exists)."""
        try:
            json.dumps(data_position)
        except TypeError as err:
            raise TypeError(f"data iterator position must be JSON-able: {err}") from None
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_position)), force=True)

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        self.wait()
        return self._manager.latest_step()

    def restore(self, template: TrainState, step: int | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
        """Load `step` (default newest) onto the template's structure and shardings."""
        self.wait()
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(template)),
            data=ocp.args.JsonRestore()))
        return restored.state, dict(restored.data)

    def wait(self) -> None:
        """Block until any asynchronous save has been committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
