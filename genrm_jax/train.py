"""Train state, optimiser and the one train step that serves every loss, plus the training loop.

The step is `(state, batch, rng) -> (state, metrics)`, jitted with the state donated so parameters and
AdamW moments are updated in place. A batch's leading axis is split into `accum_steps` micro-batches
that a `lax.scan` walks; each micro-batch's gradient is weighted by its share of the loss units
(tokens or pairs, see losses.py), which makes accumulation equal the big batch exactly.
Master weights stay in the param dtype (fp32); bf16 compute and per-layer remat are properties of the model
config that the loss function closes over (`compute_dtype`, `remat`).

Under a mesh (`state_shardings`), params keep the shardings of their logical axes, each AdamW moment that of
its parameter, and batch rows are split over data x fsdp; the step is jitted with those shardings fixed on the
way in and out, so XLA inserts the gathers and reductions and the state never moves between steps.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from genrm_jax import config_util, distributed, runtime, sharding
from genrm_jax.losses import Loss


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimiser steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # base key (uint32[2]); step k uses fold_in(rng, k), so resuming needs nothing else


class NonFiniteLossError(FloatingPointError):
    pass


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The paper's defaults: AdamW β 0.9/0.95, weight decay 0.1, cosine schedule with 10% warm-up, lr 1e-6."""
    learning_rate: float = 1e-6
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1
    final_lr_fraction: float = 0.0
    max_grad_norm: float = 1.0
    total_steps: int = 1000

    @classmethod
    def from_config(cls, cfg) -> "OptimConfig":
        """From a dict or ml_collections.ConfigDict; unknown keys are an error, not silently ignored."""
        return config_util.from_config(cls, cfg, "optimiser")


def _decay_mask(params):
    # Norm scales and biases are not decayed: shrinking them toward 0 changes the function, not its complexity.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def schedule_values(cfg: OptimConfig) -> dict:
    """The numbers of the learning-rate schedule: peak `learning_rate`, `warmup_steps` (a warm-up shorter than
    one step is none: forcing one would make a 1-step fit, a small STaR iteration, take its only step at lr 0),
    `decay_steps` (where the cosine ends) and `final_learning_rate`."""
    warmup = int(round(cfg.warmup_fraction * cfg.total_steps))
    decay = max(cfg.total_steps, warmup + 1) if warmup else max(cfg.total_steps, 1)
    return {"learning_rate": float(cfg.learning_rate), "warmup_steps": warmup, "decay_steps": decay,
            "final_learning_rate": float(cfg.learning_rate * cfg.final_lr_fraction)}


def warmup_cosine(step, learning_rate, warmup_steps, decay_steps, final_learning_rate):
    """The lr at `step`: linear from 0 at step 0 to the peak at `warmup_steps`, then cosine down to
    `final_learning_rate` at `decay_steps` (optax's warmup_cosine_decay_schedule). Every argument may be traced,
    so the schedule's length is data to a compiled step, not part of it."""
    step = jnp.asarray(step, jnp.float32)
    warmup, decay = (jnp.asarray(x, jnp.float32) for x in (warmup_steps, decay_steps))
    warm = learning_rate * step / jnp.maximum(warmup, 1.0)
    frac = jnp.clip(step - warmup, 0.0, decay - warmup) / jnp.maximum(decay - warmup, 1.0)
    cosine = final_learning_rate + (learning_rate - final_learning_rate) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(step < warmup, warm, cosine)


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warm-up over `warmup_fraction` of the steps (from lr 0 at step 0; none when that rounds to 0
    steps), then cosine decay to `final_lr_fraction` x peak."""
    values = schedule_values(cfg)
    return lambda step: warmup_cosine(step, **values)


def make_optimizer(cfg: OptimConfig = OptimConfig()) -> optax.GradientTransformation:
    """AdamW (clipped) whose schedule numbers (`schedule_values`) live in its state as arrays
    (optax.inject_hyperparams): optimisers of schedules of any length share one compiled train step."""
    def adamw(learning_rate, warmup_steps, decay_steps, final_learning_rate):
        schedule = functools.partial(warmup_cosine, learning_rate=learning_rate, warmup_steps=warmup_steps,
                                     decay_steps=decay_steps, final_learning_rate=final_learning_rate)
        parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm else []
        parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 mask=_decay_mask))
        return optax.chain(*parts)

    # fixed dtypes (no weakly typed Python scalars): a fresh, a stepped and a restored state trace alike
    return optax.inject_hyperparams(adamw)(**{k: np.asarray(v, np.int32 if isinstance(v, int) else np.float32)
                                              for k, v in schedule_values(cfg).items()})


def learning_rate_at(opt_state, step):
    """The lr `make_optimizer`'s optimiser applies at `step`, from the schedule numbers in its state; None for
    an optimiser that keeps none."""
    hp = getattr(opt_state, "hyperparams", None)
    if not isinstance(hp, dict) or set(hp) != set(schedule_values(OptimConfig())):
        return None
    return warmup_cosine(step, **hp)


def state_shardings(params, param_shardings, optimizer: optax.GradientTransformation) -> TrainState:
    """The NamedShardings of the TrainState `init_state(params, optimizer)` builds: params as given (e.g.
    sharding.shardings of their logical axes), every optimiser moment as its parameter (optax.tree_map_params
    finds the params-shaped parts of the optimiser state), counters and the rng replicated."""
    rep = sharding.replicated(jax.tree.leaves(param_shardings)[0].mesh)
    abstract = jax.eval_shape(optimizer.init, params)
    opt = optax.tree_map_params(optimizer, lambda _, s: s, abstract, param_shardings,
                                transform_non_params=lambda _: rep)
    return TrainState(rep, param_shardings, opt, rep)


def init_state(params, optimizer: optax.GradientTransformation, seed: int = 0, *,
               shardings: TrainState | None = None) -> TrainState:
    """Step 0; with `shardings` (state_shardings) params are placed on the mesh and the optimiser state is
    created there, shard by shard (never whole on one device)."""
    if shardings is None:
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jax.random.PRNGKey(seed))
    params = sharding.place(params, shardings.params)
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    step, rng = sharding.place((np.zeros((), np.int32), np.asarray(jax.random.PRNGKey(seed))),
                               (shardings.step, shardings.rng))
    return TrainState(step, params, opt_state, rng)


def abstract_state(params, optimizer: optax.GradientTransformation, shardings: TrainState | None = None
                   ) -> TrainState:
    """Shapes, dtypes and shardings of `init_state`'s result without allocating it: what a checkpoint restores
    into (on one device when no `shardings` are given)."""
    shapes = jax.eval_shape(lambda p: init_state(p, optimizer), params)
    if shardings is None:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]), shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def _split_micro(batch, n):
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} micro-batches")
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])
    return jax.tree.map(split, batch)


def make_train_step(loss_fn: Callable[[Any, dict, jax.Array], Loss], optimizer: optax.GradientTransformation, *,
                    accum_steps: int = 1, donate: bool = True, jit: bool = True, shardings: TrainState | None = None):
    """`loss_fn(params, batch, rng) -> Loss` (losses.make_loss_fn) -> `step(state, batch, rng) -> (state, metrics)`.

    metrics: the loss's own metrics (weighted means over the whole batch), `grad_norm` (before clipping),
    `weight` (loss units in the batch) and, with `make_optimizer`'s optimiser, the step's `lr` (read from the
    schedule numbers in the optimiser state: the step compiles once for schedules of any length).
    `shardings` (state_shardings): the state stays in them, batch rows are split over data x fsdp, metrics and
    the rng are replicated.
    """
    mesh = jax.tree.leaves(shardings)[0].mesh if shardings is not None else None
    grad_fn = jax.value_and_grad(lambda p, b, r: (lambda o: (o.value, o))(loss_fn(p, b, r)), has_aux=True)

    def micro(params, batch, rng):
        (_, out), g = grad_fn(params, batch, rng)
        w = out.weight.astype(jnp.float32)
        # sum of w·grad and w·metric; divided by the total weight once all micro-batches are in
        return jax.tree.map(lambda x: x.astype(jnp.float32) * w, g), jax.tree.map(lambda m: m * w, out.metrics), w

    def step(state: TrainState, batch, rng):
        if accum_steps == 1:
            # no re-weighting needed: one more pass over every gradient is measurable on a slow CPU
            (_, out), grads = grad_fn(state.params, batch, rng)
            metrics, wsum = dict(out.metrics), out.weight.astype(jnp.float32)
        else:
            mb = _split_micro(batch, accum_steps)
            if mesh is not None:
                # keep each micro-batch's rows split over the devices (not the micro-batch axis the scan walks)
                rows = sharding.batch_sharding(mesh).spec
                mb = jax.lax.with_sharding_constraint(mb, NamedSharding(mesh, P(None, *rows)))
            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            first = jax.tree.map(lambda x: x[0], mb)
            m_shape = jax.eval_shape(lambda: micro(state.params, first, rng)[1])
            init = (zeros, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape), jnp.zeros((), jnp.float32))

            def body(carry, xs):
                b, i = xs
                g, m, w = micro(state.params, b, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (g, m, w)), None

            (gsum, msum, wsum), _ = jax.lax.scan(body, init, (mb, jnp.arange(accum_steps)))
            denom = jnp.maximum(wsum, 1e-9)
            grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), gsum, state.params)
            metrics = jax.tree.map(lambda m: m / denom, msum)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["weight"] = wsum
        lr = learning_rate_at(state.opt_state, state.step)
        if lr is not None:
            metrics["lr"] = jnp.asarray(lr, jnp.float32)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(state.step + 1, params, opt_state, state.rng)
        return new, metrics

    if not jit:
        return step
    donate_argnums = (0,) if donate else ()
    if shardings is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    rep = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(shardings, sharding.batch_sharding(mesh), rep), out_shardings=(shardings, rep),
                   donate_argnums=donate_argnums)


# ------------------------------------------------------------------------------------------------ loop


def _batch_tokens(batch) -> int:
    """Tokens of the real rows (rows that only fill a batch to its shape have `valid` 0)."""
    if "mask" not in batch:
        return 0
    per_row = np.asarray(batch["mask"]).reshape(len(batch["mask"]), -1).sum(axis=1)
    return int(np.sum(per_row * batch.get("valid", 1)))


def _device_batch(batch, batch_sharding=None):
    # Bookkeeping fields (n_valid, bucket) stay on the host; the step sees arrays of fixed shapes only.
    batch = {k: v for k, v in batch.items() if k not in ("n_valid", "bucket")}
    # Under a mesh each process holds its own rows: they become one global batch (on one host, the batch itself).
    return batch if batch_sharding is None else sharding.put_batch(batch, batch_sharding)


def train(state: TrainState, step_fn, batches: Iterator[dict], *, num_steps: int, workdir: str | None = None,
          checkpointer=None, data_iterator=None, log_every: int = 1, progress: bool = True,
          on_metrics: Callable[[dict], None] | None = None, batch_sharding=None) -> TrainState:
    """Runs `step_fn` until `state.step == num_steps`.

    `batches` yields host batches (a grain iterator from data.pipeline); `data_iterator` is the object whose
    state the checkpointer saves, by default `batches` itself when it is checkpointable (has `get_state`). Every
    `log_every` steps a line goes to `workdir/metrics.jsonl` (by process 0 only; its `tok_s` counts process 0's
    rows). A non-finite loss stops the run naming the step and the last good checkpoint. `batch_sharding`
    (sharding.batch_sharding of the step's mesh): `batches` yields this process's rows (sharding.process_rows)
    and they are assembled into the global batch.
    """
    from tqdm.auto import tqdm

    if data_iterator is None and hasattr(batches, "get_state"):
        data_iterator = batches
    metrics_path = os.path.join(workdir, "metrics.jsonl") if workdir and distributed.is_main_process() else None
    if metrics_path:
        os.makedirs(workdir, exist_ok=True)
    start = int(state.step)
    bar = tqdm(total=num_steps, initial=start, desc="train", disable=not progress, dynamic_ncols=True)
    tokens_since, t_since = 0, time.perf_counter()
    try:
        step_no = start  # counted on the host: reading state.step would add a device sync per step
        while step_no < num_steps:
            try:
                batch = next(batches)
            except StopIteration:
                break
            n_tok = _batch_tokens(batch)
            step_no += 1
            rng = jax.random.fold_in(state.rng, step_no)
            state, metrics = step_fn(state, _device_batch(batch, batch_sharding), rng)
            loss = float(metrics["loss"])  # also the sync point that makes the throughput honest
            runtime.release_fragments()  # keeps RSS from growing by a stranded copy of the step's buffers
            if not math.isfinite(loss):
                last = checkpointer.latest_path() if checkpointer is not None else None
                raise NonFiniteLossError(
                    f"loss is {loss} at step {step_no}; last good checkpoint: {last or 'none saved'}"
                    + (f" (metrics so far in {metrics_path})" if metrics_path else ""))
            tokens_since += n_tok
            if step_no % log_every == 0 or step_no == num_steps:
                dt = time.perf_counter() - t_since
                row = {"step": step_no, **{k: float(v) for k, v in metrics.items()},
                       "tok_s": tokens_since / dt if dt > 0 else 0.0, "time": time.time()}
                tokens_since, t_since = 0, time.perf_counter()
                if metrics_path:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                if on_metrics:
                    on_metrics(row)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{row['tok_s']:.1f}")
            bar.update(1)
            if checkpointer is not None:
                checkpointer.maybe_save(step_no, state, data_iterator)
        if checkpointer is not None:
            checkpointer.save(step_no, state, data_iterator, force=True)
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.wait()
    return state
