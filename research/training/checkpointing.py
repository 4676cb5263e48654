"""Orbax checkpoints of the train state plus the data iterator's position.

Each checkpoint `<dir>/<step>/` holds `state` (step, trainable params, optimiser state,
PRNG key data) and `data` (the caller's JSON-able iterator position), written by one
Orbax `CheckpointManager`. Orbax writes into a temporary folder and renames it when
complete, so a crash mid-save never leaves a checkpoint that looks finished; restore
only ever sees committed steps. The frozen base weights are not stored: they come from
the model the run started from.

The state may be any pytree with a `step` (a method's own state, e.g. accelerated
Vaccine's); restoring needs a template of the same structure, and a template leaf of
size 0 is a placeholder for state whose shape depends on the data: it takes the shape
saved in the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from research.training.state import TrainState


def _abstract(template: Any, saved_shapes: dict[tuple, tuple] | None = None) -> Any:
    """Shape/dtype/sharding skeleton used to restore onto the template's devices; an
    empty leaf takes its shape from `saved_shapes` (keyed like `ocp.tree.to_flat_dict`)."""
    flat = ocp.tree.to_flat_dict(template)
    leaves = jax.tree.leaves(template)
    assert all(a is b for a, b in zip(flat.values(), leaves, strict=True))  # same order

    def leaf(key, x):
        shape = saved_shapes[key] if saved_shapes is not None and x.size == 0 else x.shape
        return jax.ShapeDtypeStruct(shape, x.dtype, sharding=getattr(x, "sharding", None))
    return jax.tree.unflatten(jax.tree.structure(template),
                              [leaf(k, x) for k, x in flat.items()])


class Checkpointer:
    """Periodic and final checkpoints in one folder; keeps the newest `max_to_keep`."""

    def __init__(self, directory: str | Path, *, save_every: int = 0, max_to_keep: int = 2,
                 async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.save_every = int(save_every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
        # handlers named up front, so a new process can read a checkpoint's metadata
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=handlers)

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
        """Load `step` (default newest) onto the template's structure and shardings
        (empty template leaves take their saved shapes)."""
        self.wait()
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        saved = None
        if any(x.size == 0 for x in jax.tree.leaves(template)):
            meta = self._manager.item_metadata(step)["state"]
            saved = {k: tuple(m.shape) for k, m in
                     ocp.tree.to_flat_dict(getattr(meta, "tree", meta)).items()}
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(template, saved)),
            data=ocp.args.JsonRestore()))
        return restored.state, dict(restored.data)

    def keep_only_latest(self) -> None:
        """Delete every checkpoint but the newest (a finished run needs no earlier one;
        a full fine-tuning checkpoint of the embedded model is 1.4 GB)."""
        self.wait()
        for step in sorted(self._manager.all_steps())[:-1]:
            self._manager.delete(step)

    def wait(self) -> None:
        """Block until any asynchronous save has been committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
