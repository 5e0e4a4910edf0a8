"""Fine-tuning as one call: records -> pipeline -> reference log-probs (DPO/IPO) -> train -> checkpoint -> params.

    params, info = fit(params, records, FinetuneConfig(kind="dpo", ...), model_config, tokenizer, workdir)

Everything a method needs between "here are training records" and "here are the new weights" lives here, so the
STaR loop, GenRM, the Bradley-Terry baselines and Self-Rationalization train the same way. A killed fit resumes
from its last orbax checkpoint (weights, AdamW moments, step, rng and the data iterator's position), and a fit
whose final checkpoint exists returns those weights without training again. DPO/IPO reference log-probs are
computed once from the weights the fit starts from (the model at the start of a STaR iteration) and cached in
`workdir/reference_logps.npy`, so a resumed fit uses the same reference.

Batches are padded to the batch size with rows that count for nothing, so no example is dropped and every
step of a length bucket has one shape (one compilation per bucket).

With a `mesh` (sharding.mesh_from_config(config.mesh)) the weights and AdamW moments are sharded by their logical
axes, each process loads only its rows of every batch, and checkpoints are written shard by shard by every
process; the returned params stay on the mesh.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genrm_jax import config_util, distributed, losses, sharding, train
from genrm_jax.checkpoint import Checkpointer
from genrm_jax.data.pipeline import PACKED_KINDS, Pipeline
from genrm_jax.models import heads, llama


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    kind: str = "sft"                  # a registered loss (losses.LOSSES): sft | dpo | ipo | bt | pairrm
    learning_rate: float = 1e-6        # the paper: 1e-6 (2e-5 for rationalizer SFT)
    epochs: int = 1
    batch_size: int = 4
    accum_steps: int = 1               # micro-batches per step (batch_size must split evenly): less activation memory
    max_len: int = 1024                # longest sequence; the conversation prefix is cut from the left
    buckets: tuple[int, ...] = ()      # length buckets (default: max_len / 4, / 2, max_len)
    beta: float | None = None          # DPO 1.0, IPO 0.4 by default
    warmup_fraction: float = 0.1
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    train_eos: bool = True             # SFT: learn to end the judgment
    remat_policy: str | None = "dense"  # per-layer remat and what it keeps (LlamaConfig); None = no remat
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 1

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"finetune.{field}={getattr(self, field)!r}: {why}")

        if self.kind not in losses.LOSSES:
            bad("kind", f"expected one of {tuple(losses.LOSSES)}")
        for field in ("epochs", "batch_size", "accum_steps", "max_len", "checkpoint_every", "keep_checkpoints"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                bad(field, "expected an integer >= 1")
        if self.batch_size % self.accum_steps:
            bad("accum_steps", f"expected a divisor of batch_size={self.batch_size} (equal micro-batches)")
        if not 0 < self.learning_rate < float("inf"):
            bad("learning_rate", "expected a finite learning rate > 0")
        if self.beta is not None and not self.beta > 0:
            bad("beta", "expected > 0 (or None for the default)")

    @classmethod
    def from_config(cls, cfg, **overrides) -> "FinetuneConfig":
        """From a dict or ConfigDict (config.train); an unknown key is an error naming it."""
        return config_util.from_config(cls, cfg, "config.train", **overrides)


def _trainable(params, head):
    return {"model": params} if head is None else {"model": params, "head": head}


def _trainable_axes(config, head):
    return _trainable(llama.logical_axes(config), None if head is None else heads.logical_axes())


def fit(params, records: list[dict], cfg: FinetuneConfig, model_config, tokenizer, workdir: str, *,
        head=None, progress: bool = True, mesh=None) -> tuple[Any, dict]:
    """Trains `params` (and the reward `head` for bt / pairrm) on `records` of kind `cfg.kind`; returns the new
    trainable params ({"model": ..., "head": ...} without head -> params alone) and a summary
    {"steps", "examples", "data": pipeline stats, "final_loss", "resumed_from"}.

    `workdir` holds the checkpoints (`ckpt/`), `metrics.jsonl` and the cached reference log-probs.
    `mesh`: train sharded over it (see the module doc); `cfg.batch_size` must split over its data x fsdp axes.
    """
    os.makedirs(workdir, exist_ok=True)
    config = model_config.replace(remat=cfg.remat_policy is not None, remat_policy=cfg.remat_policy or "")
    rows = batch_sharding = None
    if mesh is not None:
        n = sharding.batch_divisor(mesh)
        if cfg.batch_size % n:
            raise ValueError(f"finetune.batch_size={cfg.batch_size}: must be a multiple of {n}, the mesh's "
                             f"data x fsdp size {dict(mesh.shape)}")
        batch_sharding = sharding.batch_sharding(mesh)
        rows = sharding.process_rows(batch_sharding, cfg.batch_size)
    record = losses.spec(cfg.kind).record
    pipe = Pipeline(records, record, tokenizer, max_len=cfg.max_len,
                    batch_size=cfg.batch_size, buckets=cfg.buckets or None, seed=cfg.seed, epochs=cfg.epochs,
                    train_eos=cfg.train_eos, drop_remainder=False, progress=progress, rows=rows,
                    packed=_packs(record, model_config))
    steps = len(pipe)
    info = {"steps": steps, "examples": len(pipe.examples), "data": pipe.stats.as_dict()}
    opt_cfg = train.OptimConfig(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                warmup_fraction=cfg.warmup_fraction, max_grad_norm=cfg.max_grad_norm,
                                total_steps=steps)
    optimizer = train.make_optimizer(opt_cfg)
    trainable = _trainable(params, head)
    shardings = None
    if mesh is not None:
        shardings = train.state_shardings(trainable, sharding.shardings(_trainable_axes(config, head), mesh),
                                          optimizer)
        trainable = sharding.place(trainable, shardings.params)

    t0 = time.perf_counter()
    if losses.spec(cfg.kind).reference:
        pipe.attach_reference(_reference(trainable["model"], config, pipe, workdir, progress, batch_sharding))
    info["seconds"] = {"reference": round(time.perf_counter() - t0, 2)}
    ckpt = Checkpointer(os.path.join(workdir, "ckpt"), every=cfg.checkpoint_every, keep=cfg.keep_checkpoints)
    iterator = pipe.iterator()
    start = ckpt.latest_step()
    info["resumed_from"] = start
    if start is None:
        # The train step donates its state: train a copy, so the caller's params (the model the STaR loop started
        # from, the engine's source) stay alive.
        state = train.init_state(jax.tree.map(jnp.copy, trainable), optimizer, seed=cfg.seed, shardings=shardings)
    else:  # straight into place (and into this run's mesh, whichever mesh wrote it)
        state = ckpt.restore(train.abstract_state(trainable, optimizer, shardings), iterator)
    t0 = time.perf_counter()
    if start is None or start < steps:
        step_fn = _train_step(cfg, config, opt_cfg, optimizer, head is not None, mesh, shardings)
        state = train.train(state, step_fn, iterator, num_steps=steps, workdir=workdir, checkpointer=ckpt,
                            progress=progress, batch_sharding=batch_sharding)
    ckpt.close()
    info["seconds"]["train"] = round(time.perf_counter() - t0, 2)  # compilation included
    info["tokens"] = int(sum(len(t) for ex in pipe.examples for t in ex["tokens"])) * cfg.epochs
    info["final_loss"] = _last_loss(os.path.join(workdir, "metrics.jsonl"))
    out = state.params
    return (out["model"] if head is None else out), info


def _packs(record: str, config) -> bool:
    """Whether DPO / IPO pairs train packed, [prompt | chosen | rejected] in one row, the prompt (most of each
    sequence) computed once: on the "cpu" kernels, whose attention takes a dense mask anyway. The fused
    accelerator kernels take segment ids, not the shared-prefix mask (splash cannot, cuDNN would read a [T, T]
    bias), so there each side stays a row of its own."""
    return record in PACKED_KINDS and llama.resolve_kernels(config) == "cpu"


# Jitted train steps, kept across fits: a STaR run's fits differ in length (their schedule numbers live in the
# optimiser state as data, see train.make_optimizer), so they all run one compiled step. Keyed by everything the
# compiled step closes over; a few at most (each holds its executables).
_TRAIN_STEPS: dict = {}
_KEEP_STEPS = 4


def _train_step(cfg: FinetuneConfig, config, opt_cfg: train.OptimConfig, optimizer, with_head: bool, mesh,
                shardings):
    schedule_free = dataclasses.replace(opt_cfg, **{k: 0 for k in ("learning_rate", "warmup_fraction",
                                                                   "final_lr_fraction", "total_steps")})
    key = (cfg.kind, config, cfg.beta, cfg.accum_steps, schedule_free, with_head, mesh)
    if key not in _TRAIN_STEPS:
        if len(_TRAIN_STEPS) >= _KEEP_STEPS:
            _TRAIN_STEPS.pop(next(iter(_TRAIN_STEPS)))
        # the same key means the same trainable structure and mesh, so the same state shardings
        _TRAIN_STEPS[key] = train.make_train_step(losses.make_loss_fn(cfg.kind, config, beta=cfg.beta), optimizer,
                                                  accum_steps=cfg.accum_steps, shardings=shardings)
    return _TRAIN_STEPS[key]


def _reference(params, config, pipe: Pipeline, workdir: str, progress: bool, batch_sharding=None) -> np.ndarray:
    path = os.path.join(workdir, "reference_logps.npy")
    if os.path.exists(path):
        ref = np.load(path)
        if ref.shape == (len(pipe.examples), 2):
            return ref
    if batch_sharding is None:
        ref = losses.reference_logprobs(params, config, pipe.sequential_batches(), progress=progress)
    else:
        ref = _sharded_reference(params, config, pipe, batch_sharding)
    if distributed.is_main_process():  # every process computed the same values; one writes them
        tmp = path + ".tmp.npy"
        np.save(tmp, ref)
        os.replace(tmp, path)
    return ref


def _sharded_reference(params, config, pipe: Pipeline, batch_sharding) -> np.ndarray:
    """losses.reference_logprobs on the mesh: each process feeds its rows of every batch, and the log-probs come
    back replicated, so every process gets all of them (what its examples need is on another process's rows)."""
    start, stop = pipe.rows
    fn = jax.jit(lambda p, b: losses.pair_logprobs(p, b, config),
                 out_shardings=sharding.replicated(batch_sharding.mesh))
    out = []
    for batch in pipe.sequential_batches():
        n = batch["n_valid"]
        local = {k: v[start:stop] for k, v in losses.pair_arrays(batch).items()}
        out.append(np.asarray(fn(params, sharding.put_batch(local, batch_sharding)))[:n])
    return np.concatenate(out, axis=0)


def _last_loss(metrics_path: str) -> float | None:
    if not os.path.exists(metrics_path):
        return None
    last = None
    with open(metrics_path) as f:
        for line in f:
            if line.strip():
                try:
                    last = json.loads(line).get("loss", last)
                except json.JSONDecodeError:
                    pass  # a line cut by a kill
    return last
