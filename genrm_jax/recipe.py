"""What every training experiment does around its method: data, evaluation stages, export and the report.

An experiment is config -> these calls -> report:

    run, (train, eval_sets), done = recipe.open_run(c, workdir, lambda: recipe.data(c.data))
                                                     # config and data checked before any model loads; another
                                                     # config in the same directory is refused; `done`: the
                                                     # report of a run that already finished
    model = recipe.load(c, recipe.mesh(c))          # sharded over config.mesh when it has several devices
    engine = recipe.engine(c, model, mesh)           # the sampler (config group `engine`)
    before = recipe.evaluate(run, "eval_0", judge, eval_sets, c)   # a finished stage is read back, not redone
    ... the method trains (finetune.fit, or the STaR loop in genrm_jax.star) ...
    recipe.export(run, params, model)                # <workdir>/export: a Hugging Face directory
    recipe.write_report(run, rows, title)            # report.json, report.md, accuracy.png; prints the table

The config groups read here: `data` (see `data`), `eval.ks` (maj@k sizes), `seed`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from genrm_jax import evaluation, runs
from genrm_jax.data import sources, splits
from genrm_jax.judge import benchmark

IN_DISTRIBUTION = "hh-rlhf-held-out"
OUT_OF_DISTRIBUTION = "rewardbench"


# ------------------------------------------------------------------------------------------------ data


def take(records: list[dict], n: int | None, seed: int) -> list[dict]:
    """At most n records chosen by a seeded hash of their ids (input order kept); None or 0 = all."""
    if not n or n >= len(records):
        return list(records)
    keep = set(sorted(range(len(records)), key=lambda i: splits.unit_hash(seed, splits._key(records[i])))[:n])
    return [r for i, r in enumerate(records) if i in keep]


def _load(fmt: str, path: str, skipped: list | None) -> list[dict]:
    out = sources.read(fmt, path)
    if out.skipped:
        sources.log.warning("%s: skipped %d of %d rows: %s", path, len(out.skipped), out.rows,
                            sources.skipped_summary(out.skipped))
        if skipped is not None:
            skipped.extend(out.skipped)
    return out.records


def skip_counts(skipped: list) -> dict[str, int]:
    """{reason: rows} of the rows the data files could not give as pairs (for the report)."""
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    return counts


def data(d, seed: int = 0, skipped: list | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """(training pairs, {eval set: pairs}) from the config group `d`:

    - `train` "hh-rlhf" (the bundled HH-RLHF files, split by record id into train / held-out with
      `held_out_fraction`) or a file `train_path` in `train_format` (then `held_out_fraction` of it is held out);
    - `train_pairs`: at most this many training pairs (seeded; 0 = all);
    - `held_out_per_subset`: in-distribution evaluation pairs per subset (HH-RLHF split), from the held-out part
      only, never trained on;
    - `rewardbench_per_subset`: out-of-distribution RewardBench pairs per subset (0 = no RewardBench set).
    Bad values raise benchmark.ConfigError naming the field; bad files sources.DataError naming file and line.
    Rows that cannot be pairs (empty or identical answers, ...) are skipped, logged with their lines and, given
    a `skipped` list, appended to it (sources.Skipped) so the report can count them.
    """
    frac = float(d.held_out_fraction)
    if not 0.0 < frac < 1.0:
        raise benchmark.ConfigError(f"config.data.held_out_fraction: must be in (0, 1), got {d.held_out_fraction!r}")
    if d.train == "hh-rlhf":
        pool = [r for s in sources.HH_RLHF_SPLITS for r in _load("hh-rlhf", sources.hh_rlhf_path(s), skipped)]
    elif d.train == "file":
        if not d.train_path or not os.path.exists(d.train_path):
            raise benchmark.ConfigError(f"config.data.train_path: no such file: {d.train_path!r}")
        pool = _load(d.train_format, d.train_path, skipped)
    else:
        raise benchmark.ConfigError(f"config.data.train: must be 'hh-rlhf' or 'file', got {d.train!r}")
    train, held = splits.train_held_out(pool, frac, seed=seed)
    train = take(train, d.train_pairs, seed)
    if not train:
        raise benchmark.ConfigError("config.data: no training pairs left after the held-out split")
    sets = {IN_DISTRIBUTION: splits.stratified_sample(held, d.held_out_per_subset, seed=seed)
            if d.held_out_per_subset else held}
    if d.rewardbench_per_subset:
        rb = _load("rewardbench", sources.REWARDBENCH, skipped)
        sets[OUT_OF_DISTRIBUTION] = splits.stratified_sample(rb, d.rewardbench_per_subset, seed=seed)
    return train, sets


def parts(records: list[dict], n: int, seed: int = 0) -> list[list[dict]]:
    """`records` split into n disjoint parts of near-equal size by a seeded hash of the ids (STaR's iterations)."""
    if n < 1:
        raise ValueError(f"parts: n must be >= 1, got {n}")
    order = sorted(range(len(records)), key=lambda i: splits.unit_hash(seed + 7919, splits._key(records[i])))
    return [[records[i] for i in sorted(order[k::n])] for k in range(n)]


# ------------------------------------------------------------------------------------------ start-up


def open_run(c, workdir: str, prepare: Callable[[], Any]) -> tuple[runs.Run, Any, dict | None]:
    """How every training experiment starts, before any model loads: the directory's config is checked (another
    config is refused, naming the differing keys), `prepare()` checks the config groups and reads the data, and
    the run opens. A bad value, file or directory exits with one line (cli.fail). Returns (run, what `prepare`
    returned, the report of a run that already finished, printed again, or None)."""
    from genrm_jax import cli

    try:
        runs.check_config(workdir, c)  # before the data loader logs anything: a refusal is one line
        prepared = prepare()
        run = runs.Run(workdir, c)
    except (benchmark.ConfigError, sources.DataError, runs.ConfigMismatchError, ValueError) as e:
        cli.fail(e)  # plan.PlanError is a ValueError: a config that will not fit is refused here too
    return run, prepared, finished(run)


def check_memory(c, ft, *, held_copies: int = 2, sample_length: int = 0):
    """The memory planner's check before any weight loads (genrm_jax/plan.py): raises plan.PlanError, with the
    per-device figures and a mesh that would fit, when training (`ft`: a FinetuneConfig) or sampling with
    `engine.max_batch` rows of `sample_length` tokens needs more than the device has. The device's memory is
    `config.device_memory_gib`, or what the device reports (none on CPU: no check there). Returns the plan."""
    import jax

    from genrm_jax import plan, sharding

    limit = float(c.get("device_memory_gib") or 0) * 2**30
    if not limit:
        stats = jax.devices()[0].memory_stats() or {}
        limit = stats.get("bytes_limit", 0)
    if not limit:
        return None
    mesh = sharding.mesh_from_config(c.mesh) if "mesh" in c else None
    sampling = plan.Sampling(c.engine.max_batch, sample_length, c.engine.cache_dtype) if sample_length else None
    config = plan.model_config(c.model, **({"compute_dtype": c.compute_dtype} if c.get("compute_dtype") else {}))
    return plan.check(config, ft, dict(mesh.shape) if mesh is not None else (1, 1, 1), int(limit),
                      sampling=sampling, held_copies=held_copies)


def mesh(c):
    """The experiment's device mesh (`config.mesh`; a bad value raises naming the field), or None on a single
    device, where everything takes the unsharded path."""
    from genrm_jax import sharding

    m = sharding.mesh_from_config(c.mesh) if "mesh" in c else None
    return m if m is not None and m.size > 1 else None


def load(c, mesh=None):
    """The experiment's model: `config.model` read straight into shards over `mesh` (each host reads only its
    slices), computed by `config.kernels` ("auto": the CPU kernels on one CPU device, XLA's under a mesh or on
    an accelerator; LlamaConfig.kernels)."""
    import dataclasses

    from genrm_jax.io import load_model

    model = load_model(c.model, mesh=mesh, compute_dtype=c.get("compute_dtype") or None)
    kernels = c.get("kernels", "auto")
    if kernels == "auto" and mesh is not None:
        kernels = "xla"  # the CPU kernels' feature-major layout is a single-device one
    if kernels != model.config.kernels:
        model = dataclasses.replace(model, config=model.config.replace(kernels=kernels))
    return model


def engine(c, model, mesh=None):
    """The sampling engine of an experiment's model (config group `engine`), sharded over `mesh`."""
    from genrm_jax.sampling import Engine

    return Engine(model, max_batch=c.engine.max_batch, cache_dtype=c.engine.cache_dtype, mesh=mesh)


# ------------------------------------------------------------------------------------------ evaluation


def evaluate(run: runs.Run, stage: str, judge, eval_sets: dict[str, list[dict]], *, seed: int = 0,
             ks: Sequence[int] = (1,), progress: bool = True) -> dict:
    """{set: evaluation report} of `judge` on every set, as stage `stage` of the run (read back when done).
    Per-pair judgments go to <workdir>/eval/<stage>/judgments-<set>.jsonl."""
    if run.done(stage):
        return run.result(stage)
    out = {}
    for name, records in eval_sets.items():
        path = run.path("eval", stage, f"judgments-{name}.jsonl") if run.main else None
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        out[name] = benchmark.evaluate(judge, records, seed=seed, ks=ks, judgments_path=path, progress=progress)
        print(benchmark.category_table(f"{stage} {name}", out[name]), flush=True)
    return run.finish(stage, out)


def headline(reports: dict) -> dict:
    """The numbers of one evaluation that go in tables: accuracy (= maj@1 when sampled), its CI, RewardBench
    sections, the largest maj@k, invalid rate and position consistency, per set."""
    row = {}
    for name, rep in reports.items():
        row[f"{name}/accuracy"] = rep["accuracy"]
        row[f"{name}/ci95"] = rep.get("accuracy_ci95")
        row[f"{name}/invalid_rate"] = rep.get("invalid_rate")
        if "position_consistency" in rep:
            row[f"{name}/position_consistency"] = rep["position_consistency"]
        majk = rep.get("maj_at_k") or {}
        if majk:
            k = max(majk, key=int)
            row[f"{name}/maj@{k}"] = majk[k]["accuracy"]
        for section, v in (rep.get("sections") or {}).items():
            row[f"{name}/{section}"] = v
    return row


# --------------------------------------------------------------------------------------------- export


def export(run: runs.Run, params, model, *, head=None) -> str:
    """The judge as a Hugging Face directory at <workdir>/export (transformers loads it as LlamaForCausalLM;
    `llm_judge --config.model=<workdir>/export` judges with it); a reward head goes beside it as
    reward_head.npz. A finished export is not redone."""
    from genrm_jax.io import hf

    import shutil

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
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    run.finish("export", {"path": out})
    return out


# --------------------------------------------------------------------------------------------- report


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    return str(v)


SHORT = {IN_DISTRIBUTION: "ID", OUT_OF_DISTRIBUTION: "RB"}  # table headers: in-distribution, RewardBench
SUMMARY = ("stage", f"{IN_DISTRIBUTION}/accuracy", f"{IN_DISTRIBUTION}/ci95", f"{IN_DISTRIBUTION}/position_consistency",
           f"{OUT_OF_DISTRIBUTION}/accuracy", f"{OUT_OF_DISTRIBUTION}/Chat", f"{OUT_OF_DISTRIBUTION}/Chat Hard",
           f"{OUT_OF_DISTRIBUTION}/Safety", f"{OUT_OF_DISTRIBUTION}/Reasoning", f"{OUT_OF_DISTRIBUTION}/Score",
           f"{IN_DISTRIBUTION}/invalid_rate", "pairs_with_correct", "training_records", "train_steps",
           "train_final_loss")


def _header(column: str) -> str:
    name, _, field = column.partition("/")
    return f"{SHORT.get(name, name)} {field}".replace("position_consistency", "pos. consistency") if field else name


def table(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    """A markdown table of rows (dicts); columns default to the SUMMARY columns present (all of them are in
    report.json), then any maj@k."""
    present = list(dict.fromkeys(k for r in rows for k in r))
    if columns is None:
        columns = [c for c in SUMMARY if c in present] + [c for c in present if "/maj@" in c]
    lines = ["| " + " | ".join(_header(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(run: runs.Run, rows: list[dict], *, title: str, extra: dict | None = None,
                 columns: Sequence[str] | None = None) -> dict:
    """report.json (strict JSON: the rows and `extra`), report.md (the table) and accuracy.png (accuracy per
    row for each evaluation set); prints the table and where everything is. Returns the paths."""
    paths = {"json": run.path("report.json"), "md": run.path("report.md"), "png": run.path("accuracy.png")}
    if not run.main:
        return paths
    runs.write_json_atomic(paths["json"], {"title": title, "rows": rows, **(extra or {})})
    text = (f"# {title}\n\n{table(rows, columns)}\n\nID: held-out HH-RLHF pairs (in-distribution, never trained "
            f"on); RB: the RewardBench sample (out of distribution). Every figure is in report.json.\n")
    with open(paths["md"], "w") as f:
        f.write(text)
    if not _plot(rows, paths["png"], title):
        paths.pop("png")
    print(f"\n{text}", flush=True)
    print("run directory " + run.dir + ": " + ", ".join(os.path.basename(p) for p in paths.values())
          + ", config.json, metrics.jsonl, stages/" + (", export/" if run.done("export") else ""), flush=True)
    return paths


def finished(run: runs.Run) -> dict | None:
    """A finished run's report (printed again), or None: a rerun of a finished experiment loads nothing."""
    if not run.done("report"):
        return None
    with open(run.path("report.md")) as f:
        print(f.read(), flush=True)
    return run.result("report")


def _plot(rows: list[dict], path: str, title: str) -> bool:
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.endswith("/accuracy")]
    if not keys or len(rows) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(rows))
    for k in keys:
        ax.plot(x, [r.get(k) if r.get(k) is not None else np.nan for r in rows], marker="o", label=k[:-9])
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, [str(r.get("stage", i)) for i, r in enumerate(rows)], rotation=20)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
