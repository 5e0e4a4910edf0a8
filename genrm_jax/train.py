"""Train state, optimiser and the one train step that serves every loss, plus the training loop.

The step is `(state, batch, rng) -> (state, metrics)`, jitted with the state donated so parameters and
AdamW moments are updated in place. A batch's leading axis is split into `accum_steps` micro-batches
that a `lax.scan` walks; each micro-batch's gradient is weighted by its share of the loss units
(tokens or pairs, see losses.py), which makes accumulation equal the big batch exactly.
Master weights stay in the param dtype (fp32); bf16 compute and per-layer remat are properties of the model
config that the loss function closes over (`compute_dtype`, `remat`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genrm_jax import config_util, runtime
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


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warm-up over `warmup_fraction` of the steps (from lr 0 at step 0; none when that rounds to 0
    steps), then cosine decay to `final_lr_fraction` x peak."""
    # A warm-up shorter than one step is none: forcing one would make a 1-step fit (a small STaR iteration)
    # take its only step at lr 0.
    warmup = int(round(cfg.warmup_fraction * cfg.total_steps))
    end = cfg.learning_rate * cfg.final_lr_fraction
    if warmup:
        return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, max(cfg.total_steps, warmup + 1),
                                                  end_value=end)
    return optax.cosine_decay_schedule(cfg.learning_rate, max(cfg.total_steps, 1), alpha=cfg.final_lr_fraction)


def make_optimizer(cfg: OptimConfig = OptimConfig()) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm else []
    parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=_decay_mask))
    return optax.chain(*parts)


def init_state(params, optimizer: optax.GradientTransformation, seed: int = 0) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jax.random.PRNGKey(seed))


def _split_micro(batch, n):
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} micro-batches")
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])
    return jax.tree.map(split, batch)


def make_train_step(loss_fn: Callable[[Any, dict, jax.Array], Loss], optimizer: optax.GradientTransformation, *,
                    accum_steps: int = 1, schedule: optax.Schedule | None = None, donate: bool = True,
                    jit: bool = True):
    """`loss_fn(params, batch, rng) -> Loss` (losses.make_loss_fn) -> `step(state, batch, rng) -> (state, metrics)`.

    metrics: the loss's own metrics (weighted means over the whole batch), `grad_norm` (before clipping),
    `weight` (loss units in the batch) and, given the optimiser's `schedule`, the step's `lr`.
    """
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
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(state.step + 1, params, opt_state, state.rng)
        return new, metrics

    if not jit:
        return step
    return jax.jit(step, donate_argnums=(0,) if donate else ())


# ------------------------------------------------------------------------------------------------ loop


def _batch_tokens(batch) -> int:
    """Tokens of the real rows (rows that only fill a batch to its shape have `valid` 0)."""
    if "mask" not in batch:
        return 0
    per_row = np.asarray(batch["mask"]).reshape(len(batch["mask"]), -1).sum(axis=1)
    return int(np.sum(per_row * batch.get("valid", 1)))


def _device_batch(batch):
    # Bookkeeping fields (n_valid, bucket) stay on the host; the step sees arrays of fixed shapes only.
    return {k: v for k, v in batch.items() if k not in ("n_valid", "bucket")}


def train(state: TrainState, step_fn, batches: Iterator[dict], *, num_steps: int, workdir: str | None = None,
          checkpointer=None, data_iterator=None, log_every: int = 1, progress: bool = True,
          on_metrics: Callable[[dict], None] | None = None) -> TrainState:
    """Runs `step_fn` until `state.step == num_steps`.

    `batches` yields host batches (a grain iterator from data.pipeline); `data_iterator` is the object whose
    state the checkpointer saves, by default `batches` itself when it is checkpointable (has `get_state`). Every `log_every` steps a line goes to
    `workdir/metrics.jsonl`. A non-finite loss stops the run naming the step and the last good checkpoint.
    """
    from tqdm.auto import tqdm

    if data_iterator is None and hasattr(batches, "get_state"):
        data_iterator = batches
    metrics_path = os.path.join(workdir, "metrics.jsonl") if workdir else None
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
            state, metrics = step_fn(state, _device_batch(batch), jax.random.fold_in(state.rng, step_no))
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
