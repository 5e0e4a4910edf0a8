"""One experiment skeleton: open the run -> validate -> load -> engine -> the method's part -> export -> report.

    experiment.run(c, workdir)     # c: an experiment config naming its method (c.method, genrm_jax/methods.py)

Before any model loads: the config's ranges are checked (config_util.validate), the directory's recorded config
is compared (another config is refused, naming the differing keys), the groups every training method reads are
built (`train` -> finetune.FinetuneConfig with the method's loss, `judge` -> the method's evaluation judge,
`engine`, `eval.ks`), the data is read (data/splits.experiment_data), the method's part checks its own groups
(`Part.prepare`), prompts and judgments are checked to fit `train.max_len`, and the memory planner checks the
plan (genrm_jax/plan.py, with the method's held weight copies). Only then does the run directory record the
config, and a bad value, file or directory exits with one line (cli.fail).

Then the model loads (sharded over config.mesh), the sampling engine starts when the part samples or judges by
sampling, the part runs (`Part.run`: the baselines' one fit, the STaR loop, Self-Rationalization), the judge is
exported to <workdir>/export (a Hugging Face directory) and the report written (genrm_jax/report.py). A rerun
of a finished experiment prints its report and loads nothing.

A part is an object with
    prepare(setup) -> anything        # reads its config group; raises ValueError naming the field
    engine(method) -> bool            # whether it needs the sampling engine
    run(run, setup, model, engine, progress) -> report.Outcome
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import jax
import numpy as np

from genrm_jax import baselines, cli, config_util, finetune, methods, plan, report, runs, sharding
from genrm_jax.data import sources, splits
from genrm_jax.io import hf, load_model
from genrm_jax.judge import api, benchmark, settings
from genrm_jax.sampling import Engine
from genrm_jax.star import loop, sre


@dataclasses.dataclass
class Setup:
    """What the skeleton checked and read before any model loads; the part reads it."""
    c: Any
    method: methods.Method
    ft: finetune.FinetuneConfig
    judge: api.JudgeConfig            # the method's evaluation judge
    ks: tuple[int, ...]
    train: list[dict]
    eval_sets: dict[str, list[dict]]
    skipped: list                     # data rows that could not be pairs (sources.Skipped)
    mesh: Any = None
    part: Any = None                  # what the part's prepare returned
    # (longest prompt in tokens, judgment tokens, the config keys that set them) when the part trains on its own
    # sampled judgments: train.max_len must hold both, and the planner adds the sampler's KV cache
    sampled: tuple[int, int, str] | None = None

    @property
    def seed(self) -> int:
        return self.c.seed


PARTS = {"baseline": baselines.PART, "star": loop.PART, "self_rationalization": sre.PART}


def run(c, workdir: str, *, progress: bool = True) -> dict:
    """The whole experiment a config names (resumed when the directory holds an unfinished one)."""
    try:
        method = methods.of_config(c)
    except ValueError as e:
        cli.fail(e)
    part = PARTS.get(method.part)
    if part is None:
        cli.fail(f"config.method: {method.name!r} is a {method.part} method; run it with its own command")

    r, setup, done = open_run(c, workdir, lambda: prepare(c, method, part))
    if done is not None:
        return done
    model = load(c, setup.mesh)
    eng = engine(c, model, setup.mesh) if part.engine(method) else None
    print(f"{method.name}: {len(setup.train)} training pairs, "
          + ", ".join(f"{k} {len(v)} pairs" for k, v in setup.eval_sets.items()) + f"; run directory {r.dir}",
          flush=True)
    out = part.run(r, setup, model, eng, progress)
    out.rows = report.significance(r, out.rows, out.baseline)  # each trained stage against the untrained judge
    extra = {"mesh": dict(setup.mesh.shape) if setup.mesh is not None else None, "method": method.name,
             "preset": c.preset, "data_rows_skipped": splits.skip_counts(setup.skipped),
             "training_pairs": len(setup.train), "eval_pairs": {k: len(v) for k, v in setup.eval_sets.items()},
             **out.extra}
    title = out.title or f"{method.name} ({c.preset})"
    if out.params is None:  # nothing was trained: reported plainly; a rerun tries again
        report.write(r, out.rows, title=title, extra=extra, columns=out.columns)
        return {"rows": out.rows, **extra}
    extra["export"] = export(r, out.params, model, head=out.head, judge=setup.judge)
    paths = report.write(r, out.rows, title=title, extra=extra, columns=out.columns)
    return r.finish("report", {"rows": out.rows, **extra, "paths": paths})


def prepare(c, method: methods.Method, part) -> Setup:
    """Everything checked and read before any model loads: the config's groups, the data, the part's own group,
    that train.max_len holds a sampled judgment, and the memory plan. Raises ValueError (ConfigError,
    plan.PlanError) or sources.DataError naming the field or file; `run` turns them into one line."""
    config_util.validate(c)
    ft = finetune.FinetuneConfig.from_config(c.train, kind=method.loss)
    judge = benchmark.judge_config(c.judge, **method.judge_config(**({"max_len": ft.max_len} if method.head
                                                                        else {})))
    benchmark.check_engine(c)
    ks = benchmark.check_ks(c.eval.ks)
    skipped: list = []
    train, eval_sets = splits.experiment_data(c.data, c.seed, skipped)
    setup = Setup(c, method, ft, judge, ks, train, eval_sets, skipped, mesh(c))
    setup.part = part.prepare(setup)
    if setup.sampled is not None:
        prompt, new, where = setup.sampled
        if prompt and ft.max_len < prompt + new + 8:
            raise benchmark.ConfigError(
                f"config.train.max_len: {ft.max_len} cannot hold a judge prompt ({prompt} tokens) plus a "
                f"judgment ({new} tokens and the verdict; {where}): training would cut the judge's instructions")
    check_memory(c)
    return setup


# ------------------------------------------------------------------------------------------ start-up


def open_run(c, workdir: str, prepare) -> tuple[runs.Run, Any, dict | None]:
    """How every training experiment starts, before any model loads: the directory's config is checked (another
    config is refused, naming the differing keys), `prepare()` validates the config and reads the data, and only
    then the run opens and records the config. A bad value, file or directory exits with one line (cli.fail).
    Returns (run, what `prepare` returned, the report of a run that already finished, printed again, or None)."""
    try:
        runs.check_config(workdir, c)  # before the data loader logs anything: a refusal is one line
        prepared = prepare()
        r = runs.Run(workdir, c)
    except (sources.DataError, runs.ConfigMismatchError, ValueError) as e:
        cli.fail(e)  # ConfigError and plan.PlanError are ValueErrors: a config that will not fit is refused here
    return r, prepared, report.finished(r)


def check_memory(c):
    """The memory planner's check before any weight loads (genrm_jax/plan.py), of what `python -m genrm_jax.plan`
    plans for the config (plan.config_inputs: the method's loss and held weight copies, the sampler's KV cache):
    raises plan.PlanError, with the per-device figures and a mesh that would fit, when it needs more than the
    device has. The device's memory is `config.device_memory_gib`, or what the device reports (none on CPU: no
    check there). Returns the plan."""
    limit = float(c.get("device_memory_gib") or 0) * 2**30
    if not limit:
        stats = jax.devices()[0].memory_stats() or {}
        limit = stats.get("bytes_limit", 0)
    if not limit:
        return None
    ft, sampling, held = plan.config_inputs(c)
    m = sharding.mesh_from_config(c.mesh) if "mesh" in c else None
    config = plan.model_config(c.model, **({"compute_dtype": c.compute_dtype} if c.get("compute_dtype") else {}))
    return plan.check(config, ft, dict(m.shape) if m is not None else (1, 1, 1), int(limit), sampling=sampling,
                      held_copies=held)


def mesh(c):
    """The experiment's device mesh (`config.mesh`; a bad value raises naming the field), or None on a single
    device, where everything takes the unsharded path."""
    m = sharding.mesh_from_config(c.mesh) if "mesh" in c else None
    return m if m is not None and m.size > 1 else None


def load(c, mesh=None):
    """The experiment's model: `config.model` read straight into shards over `mesh` (each host reads only its
    slices), computed by `config.kernels` ("auto": the CPU kernels on one CPU device, XLA's under a mesh or on
    an accelerator; LlamaConfig.kernels)."""
    model = load_model(c.model, mesh=mesh, compute_dtype=c.get("compute_dtype") or None)
    kernels = c.get("kernels", "auto")
    if kernels == "auto" and mesh is not None:
        # the CPU kernels' feature-major layout is a single-device one; cuDNN attention partitions under a mesh,
        # the splash kernel would need a shard_map wrapper first (docs/scale-out.md)
        kernels = "cudnn" if jax.default_backend() == "gpu" else "xla"
    if kernels != model.config.kernels:
        model = dataclasses.replace(model, config=model.config.replace(kernels=kernels))
    return model


def engine(c, model, mesh=None) -> Engine:
    """The sampling engine of an experiment's model (config group `engine`), sharded over `mesh`."""
    return Engine(model, max_batch=c.engine.max_batch, cache_dtype=c.engine.cache_dtype, mesh=mesh,
                  share_prefix=c.engine.share_prefix)


# --------------------------------------------------------------------------------------------- export


def export(run: runs.Run, params, model, *, head=None, judge: api.JudgeConfig | None = None) -> str:
    """The judge as a Hugging Face directory at <workdir>/export (transformers loads it as LlamaForCausalLM;
    `llm_judge --config.model=<workdir>/export` judges with it); a reward head goes beside it as
    reward_head.npz, and the judging settings it was evaluated with (prompt, verdict mode, limits) as
    judge_settings.json, which llm_judge and the server use unless told otherwise. A finished export is not
    redone."""
    out = run.path("export")
    if run.done("export"):
        return out
    tmp = out + ".partial"
    if run.main and os.path.exists(tmp):
        shutil.rmtree(tmp)
    hf.save_hf(params, model.config, tmp, tokenizer_dir=model.path)  # every process: sharded params are gathered
    if run.main:
        if head is not None:
            np.savez(os.path.join(tmp, "reward_head.npz"), **{k: np.asarray(v) for k, v in head.items()})
        if judge is not None:
            settings.write(tmp, judge)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    run.finish("export", {"path": out})
    return out
