"""Orbax checkpoints of a run: params, optimiser state, step and rng (one pytree) plus the grain iterator.

Saving the data iterator's position with the weights is what makes a resumed run see exactly the batches an
uninterrupted one would have seen, so its losses match step for step. Only a finite state is saved: the loss of
step n is computed before step n's update, so a finite loss does not make the state after it finite (an
infinite learning rate gives a finite first loss and infinite weights). Every checkpoint is then a good one, and
"last good checkpoint" in a non-finite-loss error is the latest one.
"""
from __future__ import annotations

import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from genrm_jax.train import NonFiniteLossError, TrainState


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (an item deleted, a file damaged); the message names its path and
    what to do."""


@jax.jit
def _nonfinite(leaves):
    return jnp.stack([~jnp.all(jnp.isfinite(x)) for x in leaves])


def nonfinite_leaves(tree) -> tuple[list[str], int]:
    """(tree paths of the floating-point leaves holding a NaN or an infinity, number of floating-point leaves)."""
    flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not flat:
        return [], 0
    bad = np.asarray(_nonfinite([x for _, x in flat]))
    return [jax.tree_util.keystr(p) for (p, _), b in zip(flat, bad) if b], len(flat)


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
        """Saves step `step`; raises NonFiniteLossError, naming the last good checkpoint, when `state` holds a NaN
        or an infinity (it is not saved: resuming from it would only repeat the failure)."""
        if step in self._manager.all_steps():
            return False
        bad, n = nonfinite_leaves(state)
        if bad:
            raise NonFiniteLossError(
                f"the training state after step {step} is not finite ({len(bad)} of {n} leaves, first "
                f"{bad[0]}); it was not saved; last good checkpoint: {self.latest_path() or 'none saved'}")
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: TrainState, data_iterator=None, step: int | None = None) -> TrainState:
        """Restores into the structure (and shardings) of `abstract_state`; the iterator is restored in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        path = os.path.join(self.directory, str(step))
        earlier = [s for s in self.all_steps() if s < step]
        todo = (f"delete {path} to resume from step {max(earlier)}" if earlier
                else f"delete {path} to train again from the start (there is no earlier checkpoint)")
        wanted = ["state"] + (["data"] if data_iterator is not None else [])
        missing = [item for item in wanted if not os.path.isdir(os.path.join(path, item))]
        if missing:
            raise CheckpointError(f"{path}: checkpoint of step {step} has no {' or '.join(map(repr, missing))} "
                                  f"item (deleted, or written only in part); {todo}")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 -- orbax and its storage layers raise many types for a damaged file
            raise CheckpointError(f"{path}: checkpoint of step {step} cannot be read ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); {todo}") from e
        return TrainState(*restored["state"])

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()
