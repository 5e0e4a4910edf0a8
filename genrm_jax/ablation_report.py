"""The ablation's table: one row per method from the report.json of its run directory (report.write), plus
the zero-shot judges read from the runs' eval_0, a check that every run evaluated the same split, and the
grouped bar plot of the paper's Figure 2.

    reports = {m: ablation_report.load_run(os.path.join(workdir, m)) for m in methods}
    rows = ablation_report.rows(reports, methods)
    problems = ablation_report.consistency(reports, preset)
    ablation_report.write(workdir, rows, preset=..., notes=..., problems=problems)   # .json .md .png

A row (strict JSON): {"method", "kind" ("zero-shot" | "trained"), "run" (the run directory's name), "stage"
(the evaluation it shows), "status" ("ok" or why there is no result), "sets": {set: {"n", "accuracy", "ci95",
"verdict_accuracy", "invalid_rate", "position_consistency", "maj@1", "maj@k", "k", "sections": {Chat, Chat Hard, Safety,
Reasoning, Score}}}}; a value that does not exist for the judge (maj@k of a single-judgment judge) is null.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from genrm_jax import evaluation, methods, runs
from genrm_jax.data import splits
from genrm_jax.data.splits import IN_DISTRIBUTION, OUT_OF_DISTRIBUTION

SECTIONS = ("Chat", "Chat Hard", "Safety", "Reasoning", "Score")
# Zero-shot rows: (label, runs whose eval_0 is that judge on the base model, first found wins). Every STaR run
# evaluates with the same CoT judge (presets' `judge` group), so their eval_0 are one and the same judgment; the
# genrm baseline's eval_0 is the base model judged by its verdict-token probabilities.
ZERO_SHOT = (("llm_judge (zero-shot CoT)", tuple(m.name for m in methods.METHODS.values() if m.part == "star")),
             ("genrm zero-shot", tuple(m.name for m in methods.METHODS.values()
                                       if m.part == "baseline" and m.judge == "genrm")))
# the config keys that decide the evaluation sets (splits.experiment_data): everything but how many training pairs
SPLIT_KEYS = ("seed", "data.train", "data.train_path", "data.train_format", "data.held_out_fraction",
              "data.held_out_per_subset", "data.rewardbench_per_subset")


# ----------------------------------------------------------------------------------------------- reading


def load_run(run_dir: str) -> dict | None:
    """{"report", "config", "stages": {name: result}} of a finished run directory; None without report.json."""
    path = os.path.join(run_dir, "report.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        out = {"report": json.load(f), "config": None, "stages": {}}
    if os.path.exists(os.path.join(run_dir, "config.json")):
        with open(os.path.join(run_dir, "config.json")) as f:
            out["config"] = json.load(f)
    stages = os.path.join(run_dir, "stages")
    for row in out["report"].get("rows", []):
        stage = str(row.get("stage", ""))
        if stage.startswith("eval_") and os.path.exists(os.path.join(stages, stage + ".json")):
            with open(os.path.join(stages, stage + ".json")) as f:
                out["stages"][stage] = json.load(f)
    return out


def eval_rows(report: dict) -> list[dict]:
    return [r for r in report.get("rows", []) if str(r.get("stage", "")).startswith("eval_")]


def _set_names(row: dict) -> list[str]:
    return list(dict.fromkeys(k[:-len("/accuracy")] for k in row if k.endswith("/accuracy")))


def _set_cell(name: str, row: dict, stage_report: dict | None) -> dict:
    """One evaluation set of one report row; maj@1 and the curve's k come from the stage's full report (the
    row keeps only the largest k), else from the row."""
    ci = row.get(f"{name}/ci95")
    cell = {"n": (stage_report or {}).get("n"), "accuracy": row.get(f"{name}/accuracy"),
            "ci95": list(ci) if isinstance(ci, (list, tuple)) else None,
            "verdict_accuracy": row.get(f"{name}/verdict_accuracy"),
            "invalid_rate": row.get(f"{name}/invalid_rate"),
            "position_consistency": row.get(f"{name}/position_consistency"),
            "maj@1": None, "maj@k": None, "k": None,
            "sections": {s: row[f"{name}/{s}"] for s in SECTIONS if row.get(f"{name}/{s}") is not None}}
    curve = (stage_report or {}).get("maj_at_k") or {}
    if curve:
        k = max(curve, key=int)
        cell["maj@1"] = (curve.get("1") or {}).get("accuracy")
        cell["maj@k"], cell["k"] = curve[k]["accuracy"], int(k)
    else:
        ks = [int(key.rsplit("@", 1)[1]) for key in row if key.startswith(f"{name}/maj@")]
        if ks:
            cell["maj@k"], cell["k"] = row[f"{name}/maj@{max(ks)}"], max(ks)
    return cell


def summarize(label: str, kind: str, run: str, row: dict, stage_reports: dict | None = None) -> dict:
    stage = str(row.get("stage"))
    full = (stage_reports or {}).get(stage) or {}
    return {"method": label, "kind": kind, "run": run, "stage": stage, "status": "ok",
            "sets": {name: _set_cell(name, row, full.get(name)) for name in _set_names(row)}}


def missing(label: str, kind: str, run: str, why: str) -> dict:
    return {"method": label, "kind": kind, "run": run, "stage": None, "status": why, "sets": {}}


def rows(loaded: dict[str, dict | None], methods: Sequence[str], *,
         failures: dict[str, str] | None = None) -> list[dict]:
    """The zero-shot rows (when one of their runs is there) then one row per method: its last evaluation.
    `loaded`: {method: load_run(...)}; `failures`: {method: why} for runs with no usable result."""
    failures = failures or {}
    out = []
    for label, sources in ZERO_SHOT:
        for m in sources:
            got = loaded.get(m)
            zero = [r for r in eval_rows(got["report"]) if r.get("stage") == "eval_0"] if got else []
            if m in methods and m not in failures and zero:
                out.append(summarize(label, "zero-shot", m, zero[0], got["stages"]))
                break
    for m in methods:
        got = loaded.get(m)
        evals = eval_rows(got["report"]) if got else []
        if got and m not in failures and got["report"].get("method") == "self_rationalization" and evals:
            # one row per judge it reports: the untrained ones (eval_0_<judge>), J_SFT, the baselines and each
            # iteration, pairwise and pointwise
            out += [summarize(f"{r.get('method')} ({r.get('judge')})",
                              "zero-shot" if str(r["stage"]).startswith("eval_0_") else "trained", m, r, got["stages"])
                    for r in evals]
            continue
        if m in failures or not evals:
            out.append(missing(m, "trained", m, failures.get(m) or
                               ("no report.json" if not got else "report.json has no evaluation row")))
        else:
            out.append(summarize(m, "trained", m, evals[-1], got["stages"]))
    return out


def compare(workdir: str, rows_: list[dict], against: Sequence[str] = ("zero-shot", "bt_rm")) -> list[dict]:
    """`rows_` with, in each set of each row, `vs_<other>`: the accuracy difference against the first zero-shot row
    and against the bt_rm row on the same pairs, with a paired bootstrap 95% interval and an exact McNemar p-value
    (evaluation.compare_judgments), read from the runs' per-pair judgments (<run>/eval/<stage>/); and
    `verdict_vs_<other>`, the same on verdict scores."""
    def judgments(row, name, verdicts=False):
        path = os.path.join(workdir, row["run"], "eval", str(row["stage"]), f"judgments-{name}.jsonl")
        ok = row["status"] == "ok" and os.path.exists(path)
        return evaluation.read_judgments(path, verdicts=verdicts) if ok else None

    refs = {}
    for key in against:
        ref = next((r for r in rows_ if r["status"] == "ok"
                    and (r["kind"] == key if key == "zero-shot" else r["method"] == key)), None)
        if ref is not None:
            refs[key] = ref
    for row in rows_:
        for name, cell in row["sets"].items():
            mine, mine_verdicts = judgments(row, name), judgments(row, name, True)
            for key, ref in refs.items():
                theirs = judgments(ref, name) if ref is not row else None
                if mine and theirs:
                    cell[f"vs_{key}"] = evaluation.compare_judgments(mine, theirs, n_boot=2000)
                    cell[f"verdict_vs_{key}"] = evaluation.compare_judgments(
                        mine_verdicts, judgments(ref, name, True), n_boot=2000, verdicts=True)
    return rows_


def consistency(loaded: dict[str, dict | None], preset: str) -> list[str]:
    """Why the collected runs may not be comparable: a report of another preset, or runs whose evaluation sets
    differ (the split's config keys, or the evaluation set sizes). Empty when all agree."""
    problems = []
    present = {m: got for m, got in loaded.items() if got}
    other = {m: got["report"].get("preset") for m, got in present.items() if got["report"].get("preset") != preset}
    if other:
        problems.append(f"preset differs from {preset!r}: " + ", ".join(f"{m} ran {p!r}" for m, p in other.items()))
    flat = {m: runs.flatten(got["config"]) for m, got in present.items() if got["config"] is not None}
    for key in SPLIT_KEYS:
        values = {m: f.get(key) for m, f in flat.items()}
        if key == "data.rewardbench_per_subset":  # 0 = no RewardBench set: comparable on the sets it has
            values = {m: v for m, v in values.items() if v}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            problems.append(f"config {key} differs: " + ", ".join(f"{m}={v!r}" for m, v in values.items()))
    sizes = {m: got["report"].get("eval_pairs") for m, got in present.items() if got["report"].get("eval_pairs")}
    for name in sorted({s for v in sizes.values() for s in v}):  # each set, among the runs that evaluated it
        have = {m: v[name] for m, v in sizes.items() if name in v}
        if len(set(have.values())) > 1:
            problems.append(f"evaluation set {name} differs in size: " + ", ".join(f"{m} {n}" for m, n in have.items()))
    return problems


# ---------------------------------------------------------------------------------------------- the table


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _opt(x) -> str | None:
    return None if x is None else _num(x)


def _acc_ci(cell: dict) -> str | None:
    if cell.get("accuracy") is None:
        return None
    ci = cell.get("ci95")
    return _num(cell["accuracy"]) + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci and None not in ci else "")


def _majk(cell: dict) -> str | None:
    return None if cell.get("maj@k") is None else f"{_num(cell['maj@k'])} (k={cell['k']})"


def _vs(cell: dict, key: str, prefix: str = "") -> str | None:
    """A paired comparison cell: difference [95% CI] p, ** when significant at 0.01."""
    v = cell.get(f"{prefix}vs_{key}")
    if not v:
        return None
    lo, hi = v["ci95"]
    return f"{v['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] p={v['mcnemar_p']:.2g}" + (" **" if v["significant"] else "")


def own_sets(rows_: Sequence[dict]) -> list[str]:
    """splits.own_sets of the sets these table rows have."""
    return splits.own_sets(n for r in rows_ for n in r["sets"])


def columns(rows_: Sequence[dict] = ()) -> list:
    """(header, row -> cell text or None); a column with no value in any row is left out of the table. Sets other
    than the held-out HH-RLHF and RewardBench ones (the verifiable families' in-distribution and shifted sets)
    get accuracy columns of their own; every set gets its comparisons against the zero-shot judge and bt_rm."""
    idn, ood = IN_DISTRIBUTION, OUT_OF_DISTRIBUTION
    others = own_sets(rows_)

    def at(name, fn):
        return lambda r: fn(r["sets"][name]) if name in r["sets"] else None

    cols = [("method", lambda r: r["method"] + ("" if r["status"] == "ok" else f" ({r['status']})")),
            ("eval", lambda r: r["stage"] and f"{r['run']}/{r['stage']}")]
    for n in others:
        cols += [(f"{n} acc [95% CI]", at(n, _acc_ci)), (f"{n} vs zero-shot", at(n, lambda c: _vs(c, "zero-shot"))),
                 (f"{n} vs bt_rm", at(n, lambda c: _vs(c, "bt_rm"))),
                 (f"{n} verdict acc", at(n, lambda c: _opt(c.get("verdict_accuracy")))),
                 (f"{n} verdict vs zero-shot", at(n, lambda c: _vs(c, "zero-shot", "verdict_")))]
    # the HH-RLHF held-out set is in distribution only when the runs trained on HH-RLHF, not on other sets
    # (the `learn` preset trains on the verifiable families)
    full, short = ("in-distribution", "ID") if not others else ("HH-RLHF held-out", "HH")
    cols += [(f"{full} acc [95% CI]", at(idn, _acc_ci)),
             (f"{short} maj@1", at(idn, lambda c: _opt(c["maj@1"]))),
             (f"{short} maj@k", at(idn, _majk)),
             (f"{short} verdict acc", at(idn, lambda c: _opt(c.get("verdict_accuracy")))),
             (f"{short} invalid", at(idn, lambda c: _opt(c["invalid_rate"]))),
             (f"{short} vs zero-shot", at(idn, lambda c: _vs(c, "zero-shot"))),
             (f"{short} vs bt_rm", at(idn, lambda c: _vs(c, "bt_rm"))),
             ("RewardBench acc [95% CI]", at(ood, _acc_ci))]
    cols += [(f"RB {s}", at(ood, lambda c, s=s: _opt(c["sections"].get(s)))) for s in SECTIONS]
    cols += [("RB maj@1", at(ood, lambda c: _opt(c["maj@1"]))),
             ("RB maj@k", at(ood, _majk)),
             ("RB invalid", at(ood, lambda c: _opt(c["invalid_rate"])))]
    return cols


def table(rows_: list[dict]) -> str:
    cells = [(h, [fn(r) for r in rows_]) for h, fn in columns(rows_)]
    cells = [(h, v) for h, v in cells if h == "method" or any(x is not None for x in v)]
    lines = ["| " + " | ".join(h for h, _ in cells) + " |", "|" + "---|" * len(cells)]
    for i in range(len(rows_)):
        lines.append("| " + " | ".join("n/a" if v[i] is None else str(v[i]) for _, v in cells) + " |")
    return "\n".join(lines)


def footnotes(rows_: list[dict], *, preset: str, model: str | None, eval_pairs: dict | None) -> list[str]:
    notes = []
    zero = [r for r in rows_ if r["kind"] == "zero-shot"]
    if zero:
        notes.append("Zero-shot rows: the base model" + (f" ({model})" if model else "") + ", before any training, "
                     "judged by the same judges on the same evaluation sets as the trained methods ("
                     + "; ".join(f"{r['method']}: {r['run']}/{r['stage']}" for r in zero) + ").")
    notes.append("Each method's row is its last evaluation (run/stage in the eval column).")
    sizes = f" ({', '.join(f'{k}: {v} pairs' for k, v in eval_pairs.items())})" if eval_pairs else ""
    notes.append(f"All runs use preset {preset!r}: the same data config and seed, so the same train / held-out "
                 f"split and the same evaluation pairs{sizes}.")
    others = own_sets(rows_)
    if others:
        notes.append(f"{', '.join(others)}: the runs' own evaluation sets (for verifiable pairs: "
                     "held-out problems of the trained families, and the shifted families); HH-RLHF held-out "
                     "and RewardBench (RB) are out of distribution for these runs.")
    else:
        notes.append("In-distribution: held-out pairs of the training distribution (never trained on).")
    notes.append("RewardBench (RB): a stratified out-of-distribution sample, sections weighted by RewardBench's "
                 "example counts, Score = the mean of the sections.")
    notes.append("maj@k: expected accuracy of a majority vote over k sampled judgments (sampling judges only; "
                 "n/a for single-judgment and reward-head methods). invalid: share of judgments without a verdict.")
    notes.append("acc: P(chosen) averaged over both answer orders, above 1/2; verdict acc: each verdict counted (a "
                 "pair whose verdict follows the position, not the answers, scores 1/2), RewardBench's rule.")
    return notes


# ---------------------------------------------------------------------------------------------- outputs


SET_LABELS = {IN_DISTRIBUTION: "HH-RLHF held out", OUT_OF_DISTRIBUTION: "RewardBench"}


def plot_series(rows_: Sequence[dict]) -> list[tuple[str, list, list]]:
    """The plot's bar groups: (label, value per row, 95% CI per row or None), one group per evaluation set in the
    rows' order of first appearance, so the `learn` preset's verifiable in-distribution and shifted sets are
    plotted beside HH-RLHF and RewardBench; RewardBench shows its section Score when the rows have one."""
    names = list(dict.fromkeys(n for r in rows_ for n in r["sets"]))
    out = []
    for name in names:
        cells = [r["sets"].get(name) for r in rows_]
        scored = name == OUT_OF_DISTRIBUTION and any(c and "Score" in c["sections"] for c in cells)
        values = [None if c is None else (c["sections"].get("Score", c["accuracy"]) if scored else c["accuracy"])
                  for c in cells]
        cis = [None if c is None or scored else c.get("ci95") for c in cells]
        n = next((c["n"] for c in cells if c and c.get("n")), None)
        label = SET_LABELS.get(name, name)
        if name == IN_DISTRIBUTION and not own_sets(rows_):
            label = "in-distribution (HH-RLHF held out)"  # the runs trained on HH-RLHF
        label += (" (Score)" if scored else "") + (f", {n} pairs" if n else "")
        out.append((label, values, cis))
    return out


def plot(rows_: list[dict], path: str, title: str) -> bool:
    """Grouped bars per method, one per evaluation set (plot_series), with 95% CI whiskers where the set has
    them; a dashed line at 0.5, chance. False when no row has a result."""
    shown = [r for r in rows_ if r["status"] == "ok" and r["sets"]]
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = plot_series(shown)
    x = np.arange(len(shown))
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(6.0, (0.3 * len(groups) + 0.5) * len(shown) + 2), 4.2))
    for g, (label, values, cis) in enumerate(groups):
        ys = np.array([np.nan if v is None else v for v in values], float)
        err = np.zeros((2, len(shown)))
        for i, c in enumerate(cis):
            if c and None not in c and not np.isnan(ys[i]):
                err[:, i] = [max(0.0, ys[i] - c[0]), max(0.0, c[1] - ys[i])]
        pos = x - 0.4 + width * (g + 0.5)
        bars = ax.bar(pos, np.nan_to_num(ys), width, label=label, color=f"C{g}",
                      yerr=err if err.any() else None, capsize=3)
        for b, r, y, hi in zip(bars, shown, ys, ys + err[1]):
            if r["kind"] == "zero-shot":  # the base model: hatched
                b.set_hatch("//")
                b.set_edgecolor("white")
            if not np.isnan(y):
                ax.text(b.get_x() + b.get_width() / 2, hi + 0.01, f"{y:.2f}", ha="center", va="bottom", fontsize=7)
    line = ax.axhline(0.5, color="grey", lw=1.0, ls="--")
    ax.set_xticks(x, [r["method"] for r in shown], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.15)
    ax.set_title(title + (" (hatched: zero-shot base model)" if any(r["kind"] == "zero-shot" for r in shown) else ""),
                 fontsize=10)
    from matplotlib.patches import Patch

    ax.legend([line] + [Patch(color=f"C{g}") for g in range(len(groups))], ["chance"] + [g[0] for g in groups],
              fontsize=8, loc="upper left", ncol=len(groups) + 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write(workdir: str, rows_: list[dict], *, title: str, notes: Sequence[str], problems: Sequence[str],
          extra: dict | None = None) -> dict:
    """ablation.json (strict JSON), ablation.md and ablation.png in `workdir`; returns {"text", paths...}."""
    paths = {"json": os.path.join(workdir, "ablation.json"), "md": os.path.join(workdir, "ablation.md"),
             "png": os.path.join(workdir, "ablation.png")}
    text = f"# {title}\n\n{table(rows_)}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    if problems:
        text += "\n**Not comparable:**\n" + "\n".join(f"- {p}" for p in problems) + "\n"
    runs.write_json_atomic(paths["json"], {"title": title, "rows": rows_, "notes": list(notes),
                                           "problems": list(problems), "consistent": not problems, **(extra or {})})
    with open(paths["md"], "w") as f:
        f.write(text)
    if not plot(rows_, paths["png"], title):
        paths.pop("png")
        if os.path.exists(os.path.join(workdir, "ablation.png")):
            os.remove(os.path.join(workdir, "ablation.png"))
    return {"text": text, **paths}
