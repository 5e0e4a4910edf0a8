"""The ablation: each method's experiment on one preset, one after the other, then one table comparing them.

    python -m experiments.ablation --workdir runs/ablation [--config=experiments/configs/ablation.py:PRESET]
        [--config.methods=star_sft,star_dpo] [--config.overrides="--config.model=/path ..."] [--config.collect_only]

Each method m runs as `python -m experiments.<m> --workdir <workdir>/<m> --config=experiments/configs/<m>.py:PRESET
--config.eval.shared_dir=<workdir>/shared <overrides>` in a child process, its output streamed here with a "[m]"
prefix and kept in <workdir>/logs/<m>.log. A finished sub-run resumes as finished (its stages are done), a killed
one where it stopped: rerunning the ablation resumes it. Sub-runs share the preset's data config and seed, hence
one train / held-out split and the same evaluation pairs; the table checks that every collected run has the
preset and the split asked for. An untrained judge one sub-run evaluated is read by the next that would evaluate
the same judge on the same pairs (<workdir>/shared, report.evaluate): star_sft, star_dpo and the rationalizer
evaluate their one zero-shot judge once.

Writes <workdir>/ablation.json (strict JSON), ablation.md and ablation.png (genrm_jax/ablation_report.py) and
prints the table. Exit status 1 when a sub-run failed or the runs are not comparable (the table is written all
the same), 2 for a bad config.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from experiments.configs import presets
from genrm_jax import ablation_report, cli
from genrm_jax import methods as registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(REPO, "experiments", "configs", "ablation.py")
SHARED = "shared"  # <workdir>/shared: the untrained judges' evaluations the sub-runs share


def _methods(c) -> list[str]:
    if c.preset not in presets.PRESETS:
        cli.fail(f"config.preset: {c.preset!r} is not one of {', '.join(presets.PRESETS)}")
    methods = [m.strip() for m in str(c.methods).split(",") if m.strip()]
    if not methods or len(set(methods)) != len(methods):
        cli.fail(f"config.methods: expected a comma list of distinct experiments, got {c.methods!r}")
    unknown = [m for m in methods if m not in registry.METHODS]
    if unknown:
        cli.fail(f"config.methods: {', '.join(unknown)} is not a method; expected some of "
                 f"{', '.join(registry.METHODS)}")
    absent = [m for m in methods if not (os.path.exists(os.path.join(REPO, "experiments", f"{m}.py"))
                                         and os.path.exists(os.path.join(REPO, "experiments", "configs", f"{m}.py")))]
    if absent:
        cli.fail(f"config.methods: no experiment {', '.join(absent)} (experiments/<m>.py and "
                 f"experiments/configs/<m>.py); drop it with --config.methods=...")
    return methods


def _overrides(c) -> list[str]:
    try:
        flags = shlex.split(str(c.overrides or ""))
    except ValueError as e:
        cli.fail(f"config.overrides: {e}")
    bad = [f for f in flags if not f.startswith("--config.")]
    if bad:
        cli.fail(f"config.overrides: only --config.x=y flags are passed to the sub-runs, got {bad}")
    if c.preset == "paper" and not any(f.startswith("--config.model=") for f in flags):
        cli.fail("preset 'paper' names its model by path: --config.overrides='--config.model=/path/to/model "
                 "--config.data.train_path=/path/to/train.jsonl'")
    return flags


def run_method(m: str, workdir: str, preset: str, overrides: list[str]) -> tuple[int, float]:
    """Runs (or resumes) one sub-run, streaming its output; returns (exit status, seconds)."""
    cmd = [sys.executable, "-m", f"experiments.{m}", "--workdir", os.path.join(workdir, m),
           f"--config={os.path.join(REPO, 'experiments', 'configs', m + '.py')}:{preset}",
           f"--config.eval.shared_dir={os.path.join(workdir, SHARED)}", *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": REPO + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    print(f"[ablation] {m}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(os.path.join(workdir, "logs", f"{m}.log"), "a", encoding="utf-8") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        try:
            for line in proc.stdout:  # universal newlines: a progress bar's \r updates arrive as lines
                log.write(line)
                sys.stdout.write(f"[{m}] {line}")
                sys.stdout.flush()
        finally:
            rc = proc.wait()
    seconds = time.perf_counter() - t0
    print(f"[ablation] {m}: exit status {rc} after {seconds:.1f} s", flush=True)
    return rc, seconds


def _earlier_timings(workdir: str, methods: list[str]) -> dict:
    """The sub-runs' exit status and seconds from the ablation.json already in `workdir`, so that a collect_only
    pass keeps how long each took when it ran (a sub-run run again gets its new time)."""
    path = os.path.join(workdir, "ablation.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        earlier = json.load(f).get("runs") or {}
    return {m: earlier[m] for m in methods if m in earlier}


def main(argv):
    del argv
    c, workdir = cli.config(), os.path.abspath(cli.workdir())
    methods, overrides = _methods(c), _overrides(c)
    os.makedirs(workdir, exist_ok=True)
    failures, timings = {}, _earlier_timings(workdir, methods)
    if not c.collect_only:
        for m in methods:
            rc, seconds = run_method(m, workdir, c.preset, overrides)
            timings[m] = {"exit_status": rc, "seconds": round(seconds, 1)}
            if rc != 0:  # its report.json, if any, is from an earlier run: not shown
                failures[m] = f"sub-run failed, exit status {rc}: see logs/{m}.log"
    loaded = {m: ablation_report.load_run(os.path.join(workdir, m)) for m in methods}
    loaded_ok = {m: got for m, got in loaded.items() if m not in failures}
    rows = ablation_report.compare(workdir, ablation_report.rows(loaded, methods, failures=failures))
    problems = ablation_report.consistency(loaded_ok, c.preset)
    first = next((got for got in loaded_ok.values() if got), None)
    model = (first["config"] or {}).get("model") if first else None
    eval_pairs = first["report"].get("eval_pairs") if first else None
    notes = ablation_report.footnotes(rows, preset=c.preset, model=model, eval_pairs=eval_pairs)
    out = ablation_report.write(workdir, rows, title=f"Ablation ({c.preset} preset)", notes=notes,
                                problems=problems,
                                extra={"preset": c.preset, "methods": methods, "overrides": overrides,
                                       "model": model, "eval_pairs": eval_pairs, "failures": failures,
                                       "runs": timings})
    print("\n" + out["text"], flush=True)
    listed = [os.path.basename(out[k]) for k in ("json", "md", "png") if k in out]
    listed += ["logs/"] * os.path.isdir(os.path.join(workdir, "logs")) + [m + "/" for m in methods]
    print(f"ablation directory {workdir}: " + ", ".join(listed), flush=True)
    unfinished = {r["method"]: r["status"] for r in rows if r["status"] != "ok"}
    if unfinished or problems:
        print("error: " + "; ".join([f"{m}: {why}" for m, why in unfinished.items()] + problems),
              file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main, CONFIG_FILE)
