"""What an experiment reports: its evaluation stages, the headline numbers of each, and the report files.

    reps = report.evaluate(run, "eval_0", judge, eval_sets, seed=0, ks=(1,))  # a finished stage is read back
    reps = report.evaluate(run, "eval_0", judge, eval_sets, untrained=True)  # shared with runs of the same base
    row = {"stage": "eval_0", **report.headline(reps)}
    report.write(run, rows, title="star_dpo (default)", extra={...})          # report.json, report.md, accuracy.png
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any, Callable, Sequence

import numpy as np

from genrm_jax import distributed, evaluation, runs
from genrm_jax.data import splits
from genrm_jax.data.splits import IN_DISTRIBUTION, OUT_OF_DISTRIBUTION
from genrm_jax.judge import benchmark, bias


ZERO_SHOT_STAGE = "eval_0"  # the untrained judge of the same run: what every later stage is compared against
VS = "vs_" + ZERO_SHOT_STAGE
VERDICT_VS = "verdict_" + VS  # the same comparison on verdict scores (each verdict counted, evaluation.py)


@dataclasses.dataclass
class Outcome:
    """What a method's part hands the experiment skeleton: the final weights (None: nothing was trained, nothing
    to export), report rows, report fields, a trained reward head, the report's title and table columns, and the
    stage each row is compared against (`significance`'s `baseline`)."""
    params: Any
    rows: list[dict]
    extra: dict
    head: Any = None
    title: str = ""
    columns: Sequence[str] | None = None
    baseline: str | Callable[[dict], str] = ZERO_SHOT_STAGE


def evaluate(run: runs.Run, stage: str, judge, eval_sets: dict[str, list[dict]], *, seed: int = 0,
             ks: Sequence[int] = (1,), progress: bool = True, untrained: bool = False) -> dict:
    """{set: evaluation report} of `judge` on every set, as stage `stage` of the run (read back when done).
    Per-pair judgments go to <workdir>/eval/<stage>/judgments-<set>.jsonl.

    `untrained=True` says the judge holds the weights the run loaded (an `eval_0` stage). Then, with
    `config.eval.shared_dir` set (the ablation sets it), the evaluation is copied from that directory when a run
    with the same model, computation, judge config, pairs, seed and ks made it, and put there otherwise: the
    ablation's STaR methods share one base judge, evaluated once."""
    if run.done(stage):
        return run.result(stage)
    root = _shared_root(run) if untrained else None
    key = shared_evaluation_key(run, judge, eval_sets, seed=seed, ks=ks) if root else None
    shared = os.path.join(root, _digest(key)[:16]) if root else None
    if shared and os.path.exists(os.path.join(shared, "result.json")):
        return _reuse(run, stage, shared)
    out = {}
    for name, records in eval_sets.items():
        path = run.path("eval", stage, f"judgments-{name}.jsonl") if run.main else None
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        out[name] = benchmark.evaluate(judge, records, seed=seed, ks=ks, judgments_path=path, progress=progress)
        print(benchmark.category_table(f"{stage} {name}", out[name]), flush=True)
    result = run.finish(stage, out)
    if shared:
        _share(run, stage, shared, key, result)
    return result


# The groups of a run's config that decide, besides the judge's config and the pairs, what an untrained judge's
# evaluation gives: the weights loaded and how they compute (the sampler's batching included).
SHARED_KEY_GROUPS = ("model", "compute_dtype", "kernels", "engine", "mesh")


def shared_evaluation_key(run: runs.Run, judge, eval_sets: dict, *, seed: int, ks: Sequence[int]) -> dict:
    """What identifies an untrained judge's evaluation: the config groups above, the model files' sizes and
    times (a directory rewritten in place is another model), the judge's kind and config, the seed, ks and a
    hash of every set's records."""
    cfg = judge.config
    model = run.config.get("model")
    files = {}
    if isinstance(model, str) and os.path.isdir(model):
        files = {f: [os.path.getsize(os.path.join(model, f)), os.path.getmtime(os.path.join(model, f))]
                 for f in sorted(os.listdir(model)) if os.path.isfile(os.path.join(model, f))}
    elif isinstance(model, str) and os.path.isfile(model):
        files = {model: [os.path.getsize(model), os.path.getmtime(model)]}
    return runs.strict_json({
        **{k: run.config.get(k) for k in SHARED_KEY_GROUPS}, "model_files": files,
        "judge": type(judge).__name__,
        "judge_config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else repr(cfg),
        "seed": seed, "ks": list(ks), "sets": {name: _digest(recs) for name, recs in sorted(eval_sets.items())}})


def _shared_root(run: runs.Run) -> str | None:
    """config.eval.shared_dir, or None when sharing is off (not set, or a run of several processes, which would
    all have to agree on every hit)."""
    root = (run.config.get("eval") or {}).get("shared_dir")
    return None if not root or distributed.is_multi_process() else os.path.abspath(root)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _reuse(run: runs.Run, stage: str, shared: str) -> dict:
    with open(os.path.join(shared, "result.json")) as f:
        result = json.load(f)
    if run.main:
        os.makedirs(run.path("eval", stage), exist_ok=True)
        for name in result:
            src = os.path.join(shared, f"judgments-{name}.jsonl")
            if os.path.exists(src):
                shutil.copyfile(src, run.path("eval", stage, f"judgments-{name}.jsonl"))
    print(f"{stage}: the same evaluation as {shared} (same model, judge, pairs and seed): read from there", flush=True)
    for name, rep in result.items():
        print(benchmark.category_table(f"{stage} {name}", rep), flush=True)
    run.log({"event": "shared_evaluation", "stage": stage, "from": shared})
    return run.finish(stage, result)


def _share(run: runs.Run, stage: str, shared: str, key: dict, result: dict) -> None:
    """Puts the stage's result and judgments in `shared`, whole or not at all (a directory renamed into place)."""
    if not run.main or os.path.exists(shared):
        return
    os.makedirs(os.path.dirname(shared), exist_ok=True)
    tmp = shared + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in result:
        src = run.path("eval", stage, f"judgments-{name}.jsonl")
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(tmp, f"judgments-{name}.jsonl"))
    runs.write_json_atomic(os.path.join(tmp, "key.json"), {"made_by": run.dir, "stage": stage, "key": key})
    runs.write_json_atomic(os.path.join(tmp, "result.json"), result)
    try:
        os.rename(tmp, shared)
    except OSError:  # another run shared the same evaluation meanwhile
        shutil.rmtree(tmp, ignore_errors=True)


def bias_stage(run: runs.Run, stage: str, judge, records: list[dict], eval_cfg) -> dict | None:
    """Position, length and master-key bias of `judge` (judge/bias.py) on the first `eval.bias_pairs` records, as
    stage `stage` (read back when done); None when `eval.bias` is off. The attack replaces the rejected answer of
    the first `eval.bias_attack_pairs` of them by each content-free key, so its cost is bounded by config."""
    if not eval_cfg.get("bias", True) or not records:
        return None
    if run.done(stage):
        return run.result(stage)
    n = int(eval_cfg.get("bias_pairs", 0) or 0) or len(records)
    rep = bias.bias_report(judge, records[:n], attack_pairs=eval_cfg.get("bias_attack_pairs"))
    print(bias.bias_table(stage, rep), flush=True)
    return run.finish(stage, rep)


def evaluates_iteration(eval_cfg, t: int, iterations: int) -> bool:
    """Whether a loop evaluates its judge after iteration t of `iterations`: after every one, or with
    `config.eval.every_iteration=false` after the last only (the STaR loop and Self-Rationalization)."""
    return t == iterations or bool((eval_cfg or {}).get("every_iteration", True))


def bias_headline(rep: dict | None) -> dict:
    """The bias figures that go in report tables."""
    if not rep:
        return {}
    return {"bias/first_win_rate": rep["position"]["first_win_rate"], "bias/flip_rate": rep["position"]["flip_rate"],
            "bias/prefers_longer": rep["length"]["prefers_longer_rate"], "bias/master_key_rate": rep["master_key"]["rate"]}


def headline(reports: dict) -> dict:
    """The numbers of one evaluation that go in tables: accuracy (= maj@1 when sampled), its CI, verdict accuracy
    (evaluation.verdict_scores), RewardBench sections, the largest maj@k, invalid rate and position consistency,
    per set."""
    row = {}
    for name, rep in reports.items():
        row[f"{name}/accuracy"] = rep["accuracy"]
        row[f"{name}/ci95"] = rep.get("accuracy_ci95")
        if rep.get("verdict_accuracy") is not None:
            row[f"{name}/verdict_accuracy"] = rep["verdict_accuracy"]
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


def significance(run: runs.Run, rows: list[dict],
                 baseline: str | Callable[[dict], str] = ZERO_SHOT_STAGE) -> list[dict]:
    """`rows` with, for every stage evaluated after `baseline` on the same sets, `<set>/vs_eval_0`: the accuracy
    difference on the same pairs with its paired bootstrap 95% interval and the exact McNemar p-value
    (evaluation.compare_judgments; `significant` at p < 0.01), read from the per-pair judgments in eval/; and
    `<set>/verdict_vs_eval_0`, the same on verdict scores. `baseline`: the untrained judge's stage, or a function
    of the row that names it (Self-Rationalization compares each of its judges with the same judge untrained)."""
    out = []
    for row in rows:
        row = dict(row)
        stage = row.get("stage")
        base_stage = baseline(row) if callable(baseline) else baseline
        base_dir, stage_dir = run.path("eval", base_stage), run.path("eval", str(stage))
        if stage and stage != base_stage and os.path.isdir(stage_dir) and os.path.isdir(base_dir):
            for name in sorted(os.listdir(stage_dir)):
                base = os.path.join(base_dir, name)
                if name.startswith("judgments-") and name.endswith(".jsonl") and os.path.exists(base):
                    set_name, path = name[len("judgments-"):-len(".jsonl")], os.path.join(stage_dir, name)
                    row[f"{set_name}/{VS}"] = evaluation.compare_judgments(
                        evaluation.read_judgments(path), evaluation.read_judgments(base), n_boot=2000)
                    row[f"{set_name}/{VERDICT_VS}"] = evaluation.compare_judgments(
                        evaluation.read_judgments(path, verdicts=True), evaluation.read_judgments(base, verdicts=True),
                        n_boot=2000, verdicts=True)
        out.append(row)
    return out


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, dict) and "mcnemar_p" in v:  # a paired comparison: difference [CI] p, ** when significant
        lo, hi = v["ci95"]
        return (f"{v['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] p={v['mcnemar_p']:.2g}"
                + (" **" if v["significant"] else ""))
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    return str(v)


SHORT = {IN_DISTRIBUTION: "ID", OUT_OF_DISTRIBUTION: "RB"}  # table headers: in-distribution, RewardBench
SUMMARY = ("stage", f"{IN_DISTRIBUTION}/accuracy", f"{IN_DISTRIBUTION}/ci95", f"{IN_DISTRIBUTION}/verdict_accuracy",
           f"{IN_DISTRIBUTION}/position_consistency",
           f"{OUT_OF_DISTRIBUTION}/accuracy", f"{OUT_OF_DISTRIBUTION}/Chat", f"{OUT_OF_DISTRIBUTION}/Chat Hard",
           f"{OUT_OF_DISTRIBUTION}/Safety", f"{OUT_OF_DISTRIBUTION}/Reasoning", f"{OUT_OF_DISTRIBUTION}/Score",
           f"{IN_DISTRIBUTION}/invalid_rate", "bias/first_win_rate", "bias/flip_rate", "bias/prefers_longer",
           "bias/master_key_rate", "pairs_with_correct", "training_records", "train_steps",
           "train_final_loss")


def own_sets(rows: Sequence[dict]) -> list[str]:
    """splits.own_sets of the sets these report rows have an accuracy for."""
    return splits.own_sets(k.partition("/")[0] for r in rows for k in r if k.endswith("/accuracy"))


def _header(column: str, short: dict) -> str:
    name, _, field = column.partition("/")
    return (f"{short.get(name, name)} {field}".replace("position_consistency", "pos. consistency")
            .replace("verdict_accuracy", "verdict acc.") if field else name)


def _legend(rows: Sequence[dict]) -> str:
    if own_sets(rows):
        return (f"HH: held-out HH-RLHF pairs, RB: the RewardBench sample; both out of distribution for this run, "
                f"which trained on the distribution of {', '.join(own_sets(rows))}.")
    return ("ID: held-out HH-RLHF pairs (in-distribution, never trained on); RB: the RewardBench sample (out of "
            "distribution).")


def table(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    """A markdown table of rows (dicts); columns default to the SUMMARY columns present (all of them are in
    report.json), then any maj@k."""
    present = list(dict.fromkeys(k for r in rows for k in r))
    if columns is None:
        known = {c.partition("/")[0] for c in SUMMARY}
        other_sets = [c for c in present if c.endswith("/accuracy") and c.partition("/")[0] not in known]
        columns = ([c for c in SUMMARY if c in present]
                   + [c for c in present if c.endswith((f"/{VS}", f"/{VERDICT_VS}")) or c in other_sets
                      or (c.endswith("/ci95") and c.replace("/ci95", "/accuracy") in other_sets)
                      or (c.endswith("/verdict_accuracy") and c.replace("/verdict_accuracy", "/accuracy") in other_sets)]
                   + [c for c in present if "/maj@" in c])
    short = {**SHORT, IN_DISTRIBUTION: "HH"} if own_sets(rows) else SHORT
    lines = ["| " + " | ".join(_header(c, short) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write(run: runs.Run, rows: list[dict], *, title: str, extra: dict | None = None,
          columns: Sequence[str] | None = None) -> dict:
    """report.json (strict JSON: the rows and `extra`), report.md (the table) and accuracy.png (accuracy per
    row for each evaluation set); prints the table and where everything is. Returns the paths."""
    paths = {"json": run.path("report.json"), "md": run.path("report.md"), "png": run.path("accuracy.png")}
    if not run.main:
        return paths
    runs.write_json_atomic(paths["json"], {"title": title, "rows": rows, **(extra or {})})
    text = (f"# {title}\n\n{table(rows, columns)}\n\n{_legend(rows)} `{VS}`: accuracy difference against the "
            f"untrained judge of this run on the same pairs, paired bootstrap 95% interval, exact McNemar p-value; "
            f"** marks p < {evaluation.SIGNIFICANCE_LEVEL}. Verdict acc. / `{VERDICT_VS}`: the same with each verdict "
            f"counted (a pair whose verdict follows the position, not the answers, scores 1/2). Every figure is in report.json; the per-pair judgments "
            f"are in eval/ (python -m genrm_jax.compare RUN_A RUN_B compares two runs).\n")
    runs.write_text_atomic(paths["md"], text)
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
    import matplotlib  # optional and slow to import: only when there is something to plot

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
