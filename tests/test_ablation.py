"""The ablation (experiments/ablation.py, genrm_jax/ablation_report.py) and the STaR iteration benchmark
(experiments/bench_star.py): the table from synthetic run directories (columns, zero-shot rows, the split
check), and end to end on the smoke preset: two real sub-runs, their table, plot and JSON, a rerun that resumes
every sub-run as finished and prints the same table, and a benchmark run printing its JSON."""
import glob
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from genrm_jax import ablation_report, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ID, RB = ablation_report.IN_DISTRIBUTION, ablation_report.OUT_OF_DISTRIBUTION


def _env():
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _ablation(workdir, *flags, preset="smoke", timeout=1500):
    return subprocess.run([sys.executable, "-m", "experiments.ablation", "--workdir", str(workdir),
                           f"--config=experiments/configs/ablation.py:{preset}", *flags],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _strict_json(path):
    def bad(constant):
        raise ValueError(f"{path}: not strict JSON ({constant})")

    with open(path) as f:
        return json.load(f, parse_constant=bad)


def _table(stdout):
    return [line for line in stdout.splitlines() if line.startswith("|")]


# ------------------------------------------------------------------------------------- synthetic runs


def _row(stage, acc, rb=None, majk=None):
    r = {"stage": stage, f"{ID}/accuracy": acc, f"{ID}/ci95": [acc - 0.05, acc + 0.05], f"{ID}/invalid_rate": 0.01}
    if rb is not None:
        r.update({f"{RB}/accuracy": rb, f"{RB}/ci95": None, f"{RB}/invalid_rate": 0.0, f"{RB}/Chat": 0.9,
                  f"{RB}/Chat Hard": 0.3, f"{RB}/Safety": 0.6, f"{RB}/Reasoning": 0.5, f"{RB}/Score": 0.575})
    if majk is not None:
        r[f"{ID}/maj@4"] = majk
    return r


def _fake_run(root, method, rows, *, preset="small", seed=0, stages=None, eval_pairs=None):
    d = os.path.join(root, method)
    runs.write_json_atomic(os.path.join(d, "report.json"),
                           {"title": method, "rows": rows, "method": method, "preset": preset,
                            "eval_pairs": eval_pairs or {ID: 100, RB: 23}})
    runs.write_json_atomic(os.path.join(d, "config.json"),
                           {"model": "m", "seed": seed, "data": {"train": "hh-rlhf", "train_pairs": 600,
                                                                 "held_out_per_subset": 50}})
    for name, result in (stages or {}).items():
        runs.write_json_atomic(os.path.join(d, "stages", f"{name}.json"), result)


def test_rows_table_and_split_check(tmp_path):
    curve = {ID: {"n": 100, "maj_at_k": {"1": {"accuracy": 0.52}, "2": {"accuracy": 0.55}, "4": {"accuracy": 0.6}}}}
    _fake_run(tmp_path, "star_dpo", [_row("eval_0", 0.55, 0.5, 0.6), _row("eval_1", 0.6, 0.55, 0.62),
                                     _row("eval_2", 0.65, 0.6, 0.7)], stages={"eval_0": curve})
    _fake_run(tmp_path, "genrm", [_row("eval_0", 0.5, 0.5), _row("eval_1", 0.7, 0.65)])
    _fake_run(tmp_path, "bt_rm", [_row("eval_1", 0.72)])
    methods = ["star_dpo", "genrm", "bt_rm", "pairrm"]
    loaded = {m: ablation_report.load_run(os.path.join(tmp_path, m)) for m in methods}
    assert loaded["pairrm"] is None
    rows = ablation_report.rows(loaded, methods)
    assert [(r["method"], r["stage"], r["status"]) for r in rows] == [
        ("llm_judge (zero-shot CoT)", "eval_0", "ok"), ("genrm zero-shot", "eval_0", "ok"),
        ("star_dpo", "eval_2", "ok"), ("genrm", "eval_1", "ok"), ("bt_rm", "eval_1", "ok"),
        ("pairrm", None, "no report.json")]
    zero = rows[0]["sets"][ID]
    assert (zero["maj@1"], zero["maj@k"], zero["k"]) == (0.52, 0.6, 4)  # the stage's curve, not the row
    assert rows[2]["sets"][ID]["maj@k"] == 0.7 and rows[2]["sets"][ID]["maj@1"] is None  # no stage file
    assert rows[2]["sets"][RB]["sections"]["Score"] == 0.575 and RB not in rows[4]["sets"]
    assert ablation_report.consistency(loaded, "small") == []
    text = ablation_report.table(rows)
    header = text.splitlines()[0]
    for col in ("in-distribution acc [95% CI]", "ID maj@k", "RB Chat Hard", "RB Score", "RewardBench acc"):
        assert col in header
    assert "RB maj@1" not in header  # no row has it: left out
    assert [label for label, _, _ in ablation_report.plot_series(rows[:5])] == [
        "in-distribution (HH-RLHF held out), 100 pairs", "RewardBench (Score)"]
    assert ablation_report.plot_series(rows[:5])[1][1] == [0.575, 0.575, 0.575, 0.575, None]  # bt_rm: no RB set
    assert "| star_dpo | star_dpo/eval_2 | 0.650 [0.600, 0.700] |" in text
    assert "| pairrm (no report.json) |" in text

    # another preset, another seed, other evaluation sets: each named
    _fake_run(tmp_path, "genrm", [_row("eval_1", 0.7)], preset="default", seed=1, eval_pairs={ID: 50})
    loaded["genrm"] = ablation_report.load_run(os.path.join(tmp_path, "genrm"))
    problems = ablation_report.consistency(loaded, "small")
    assert len(problems) == 3 and "genrm ran 'default'" in problems[0] and "seed" in problems[1]
    out = ablation_report.write(str(tmp_path), rows, title="t", notes=["n"], problems=problems)
    assert _strict_json(out["json"])["consistent"] is False and os.path.exists(out["png"])


def test_significance_against_zero_shot_and_bt_rm_from_the_judgments(tmp_path):
    """Each row's sets gain vs_zero-shot and vs_bt_rm, computed from the runs' per-pair judgment files; a judge
    right on 12 more of 40 pairs than the zero-shot one and on none fewer is significant (McNemar p = 2^-11)."""
    def judged(method, stage, name, right):
        path = os.path.join(tmp_path, method, "eval", stage, f"judgments-{name}.jsonl")
        runs.write_jsonl(path, [{"id": str(i), "subset": "s", "p_chosen": 0.9 if i in right else 0.1,
                                 "votes_chosen": [[1], [1]] if i in right else [[1], [0]]} for i in range(40)])

    _fake_run(tmp_path, "star_dpo", [_row("eval_0", 0.5), _row("eval_1", 0.8), {"stage": "eval_2",
                                                                                 "verifiable-in/accuracy": 0.8}])
    _fake_run(tmp_path, "bt_rm", [_row("eval_1", 0.5)])
    judged("star_dpo", "eval_0", ID, set(range(20)))
    judged("star_dpo", "eval_1", ID, set(range(32)))
    judged("star_dpo", "eval_0", "verifiable-in", set(range(20)))
    judged("star_dpo", "eval_2", "verifiable-in", set(range(32)))
    judged("bt_rm", "eval_1", ID, set(range(8, 28)))
    methods = ["star_dpo", "bt_rm"]
    loaded = {m: ablation_report.load_run(os.path.join(tmp_path, m)) for m in methods}
    rows = ablation_report.compare(str(tmp_path), ablation_report.rows(loaded, methods))
    assert [(r["method"], r["stage"]) for r in rows] == [("llm_judge (zero-shot CoT)", "eval_0"),
                                                         ("star_dpo", "eval_2"), ("bt_rm", "eval_1")]
    vs = rows[1]["sets"]["verifiable-in"]["vs_zero-shot"]
    assert (vs["n"], vs["a_only"], vs["b_only"]) == (40, 12, 0) and abs(vs["difference"] - 0.3) < 1e-12
    assert vs["mcnemar_p"] == 2 * 0.5 ** 12 and vs["significant"]
    verdict = rows[1]["sets"]["verifiable-in"]["verdict_vs_zero-shot"]  # wrong pairs are position ties: 1/2 each
    assert (verdict["a_only"], verdict["b_only"]) == (12, 0) and abs(verdict["difference"] - 0.15) < 1e-12
    bt = rows[2]["sets"][ID]
    assert "vs_bt_rm" not in bt and bt["vs_zero-shot"]["difference"] == 0.0 and not bt["vs_zero-shot"]["significant"]
    assert (bt["vs_zero-shot"]["a_only"], bt["vs_zero-shot"]["b_only"]) == (8, 8)
    text = ablation_report.table(rows)
    assert "verifiable-in vs zero-shot" in text.splitlines()[0] and "+0.300" in text and "**" in text
    assert "verifiable-in verdict vs zero-shot" in text.splitlines()[0] and "+0.150" in text
    # these runs trained on verifiable pairs: HH-RLHF is not their in-distribution set, in the table or the plot
    assert "HH-RLHF held-out acc [95% CI]" in text.splitlines()[0] and "in-distribution acc" not in text
    notes = ablation_report.footnotes(rows, preset="learn", model=None, eval_pairs=None)
    assert any("out of distribution for these runs" in n for n in notes)
    series = ablation_report.plot_series(rows)
    assert [label for label, _, _ in series] == ["HH-RLHF held out", "verifiable-in"]
    assert series[1][1] == [None, 0.8, None]  # the zero-shot row's eval_0 row has no verifiable-in accuracy


def test_collect_only_and_config_errors(tmp_path):
    _fake_run(tmp_path, "star_sft", [_row("eval_0", 0.5), _row("eval_1", 0.6)])
    _fake_run(tmp_path, "star_dpo", [_row("eval_0", 0.5), _row("eval_1", 0.7)])
    timed = {"star_sft": {"exit_status": 0, "seconds": 1021.5}, "star_dpo": {"exit_status": 0, "seconds": 677.0}}
    runs.write_json_atomic(str(tmp_path / "ablation.json"), {"runs": timed})  # the pass that ran them
    r = _ablation(tmp_path, "--config.methods=star_sft,star_dpo", "--config.collect_only", preset="small",
                  timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| star_dpo | star_dpo/eval_1 | 0.700 [0.650, 0.750] | 0.010 |" in r.stdout
    got = _strict_json(tmp_path / "ablation.json")
    assert [x["method"] for x in got["rows"]] == ["llm_judge (zero-shot CoT)", "star_sft", "star_dpo"]
    assert got["runs"] == timed  # collecting again keeps how long each sub-run took
    r = _ablation(tmp_path, "--config.methods=star_sft,star_dpo", "--config.collect_only", preset="default",
                  timeout=120)  # the runs are of preset small
    assert r.returncode == 1 and "preset differs from 'default'" in r.stderr
    r = _ablation(tmp_path, "--config.methods=star_dpo,no_such_method", timeout=120)
    assert r.returncode == 2 and "config.methods: no_such_method is not a method; expected some of" in r.stderr
    r = _ablation(tmp_path, preset="paper", timeout=120)  # the paper's model is a path
    assert r.returncode == 2 and "--config.model=" in r.stderr
    r = _ablation(tmp_path, "--config.overrides=--model=/x", timeout=120)
    assert r.returncode == 2 and "only --config.x=y flags" in r.stderr


# -------------------------------------------------------------------------------------------- end to end


def test_ablation_smoke_end_to_end(tmp_path):
    methods = ["star_dpo", "genrm"] if importlib.util.find_spec("experiments.genrm") else ["star_sft", "star_dpo"]
    flag = "--config.methods=" + ",".join(methods)
    t0 = time.perf_counter()
    first = _ablation(tmp_path, flag)
    first_s = time.perf_counter() - t0
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for m in methods:
        assert f"[{m}] " in first.stdout  # the sub-run's output, streamed with its prefix
        assert os.path.exists(tmp_path / m / "report.json") and os.path.exists(tmp_path / "logs" / f"{m}.log")

    got = _strict_json(tmp_path / "ablation.json")
    zero = ["llm_judge (zero-shot CoT)"] + (["genrm zero-shot"] if "genrm" in methods else [])
    assert [r["method"] for r in got["rows"]] == zero + methods
    assert all(r["status"] == "ok" and r["sets"][ID]["accuracy"] is not None for r in got["rows"])
    assert got["consistent"] and got["problems"] == [] and got["preset"] == "smoke"
    assert got["rows"][0]["run"] == "star_dpo" and got["rows"][0]["stage"] == "eval_0"
    for r in got["rows"][len(zero):]:  # each method: its last evaluation
        report = _strict_json(tmp_path / r["run"] / "report.json")
        assert r["stage"] == [x for x in report["rows"] if x["stage"].startswith("eval_")][-1]["stage"]
    assert os.path.getsize(tmp_path / "ablation.png") > 0 and os.path.exists(tmp_path / "ablation.md")
    # each sub-run put its base judge's evaluation where the next one with the same judge would read it
    # (that reuse: tests/test_evaluation.py): one per base judge, the STaR methods' CoT judge and GenRM's
    assert len(os.listdir(tmp_path / "shared")) == 1 + ("genrm" in methods)
    table = _table(first.stdout)
    assert len(table) == 2 + len(zero) + len(methods) and "in-distribution acc [95% CI]" in table[0]

    evals = {p: os.path.getmtime(p) for m in methods for p in glob.glob(str(tmp_path / m / "stages" / "eval_*.json"))}
    assert evals
    t0 = time.perf_counter()
    again = _ablation(tmp_path, flag)
    again_s = time.perf_counter() - t0
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert _table(again.stdout) == table
    # every sub-run resumed as finished: no evaluation redone, nothing sampled
    assert {p: os.path.getmtime(p) for p in evals} == evals
    assert "judgments:" not in again.stdout
    print(f"ablation smoke: first run {first_s:.1f} s, rerun {again_s:.1f} s")
    assert again_s < 0.5 * first_s, (first_s, again_s)


def test_bench_star_smoke():
    r = subprocess.run([sys.executable, "-m", "experiments.bench_star", "--preset", "smoke", "--pairs", "2"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1  # the JSON alone on stdout
    out = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert set(out["seconds"]) == {"load", "sampling", "reference", "training", "fit_other", "evaluation", "total"}
    assert set(out["tokens_per_s"]) == {"sampling", "sampling_generated", "reference", "training",
                                        "training_steady", "evaluation"}
    assert all(out["seconds"][k] > 0 for k in ("sampling", "training", "evaluation"))
    assert all(out["tokens_per_s"][k] > 0 for k in ("sampling", "reference", "training", "evaluation"))
    assert out["tokens"]["sampling"]["generated"] > 0 and out["tokens"]["sampling"]["scored"] > 0
    assert out["tokens"]["training"] > 0 and 0 < out["peak_rss_gb"] < 64
    assert out["pairs"] == 2 and out["judgments"] == 2 * out["samples_per_pair"] and out["train_steps"] >= 1
