"""Orbax checkpoints of a run: params, optimiser state, step and rng (one pytree) plus the grain iterator.

Saving the data iterator's position with the weights is what makes a resumed run see exactly the batches an
uninterrupted one would have seen, so its losses match step for step.
"""
from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp

from genrm_jax.train import TrainState


class Checkpointer:
    """Save every `every` steps (and when forced, e.g. at the end of a run), keep the last `keep`."""

    def __init__(self, directory: str, *, every: int = 100, keep: int = 3):
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint every={every}, keep={keep}: both must be >= 1")
        self.directory = os.path.abspath(directory)
        self.every = every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def latest_path(self) -> str | None:
        step = self.latest_step()
        return None if step is None else os.path.join(self.directory, str(step))

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def maybe_save(self, step: int, state: TrainState, data_iterator=None) -> bool:
        if step % self.every:
            return False
        return self.save(step, state, data_iterator)

    def save(self, step: int, state: TrainState, data_iterator=None, *, force: bool = False) -> bool:
        if step in self._manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: TrainState, data_iterator=None, step: int | None = None) -> TrainState:
        """Restores into the structure (and shardings) of `abstract_state`; the iterator is restored in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return TrainState(*restored["state"])

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()
