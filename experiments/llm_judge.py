r"""Zero-shot LLM-as-judge baseline: the embedded model judges preference pairs; accuracy, RewardBench sections,
maj@k, position consistency and invalid rate go to DIR/report.json, report.md and majk.png.

  python -m experiments.llm_judge --workdir runs/llm_judge                      # stratified RewardBench sample
  python -m experiments.llm_judge --workdir runs/full --config=experiments/configs/llm_judge.py:full
  python -m experiments.llm_judge --workdir runs/x --config.eval.path=pairs.jsonl --config.eval.limit=100

Per-pair judgments (verdicts and rationales) are written to DIR/judgments-<set>-<method>.jsonl for inspection,
one line per pair. The whole config is checked before the model loads; a bad field or flag is one line on
stderr and exit status 2. The benchmark itself (sets, judge configs, scoring) is genrm_jax.judge.benchmark.
"""
from __future__ import annotations

import dataclasses
import os
import time

from absl import logging

from genrm_jax import cli, config_util, distributed, evaluation, experiment, runs
from genrm_jax.data import benchmarks, sources
from genrm_jax.judge import api, benchmark, bias, settings

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "llm_judge.py")


def check_config(c) -> dict:
    """Every check that needs no model: {method: JudgeConfig}. Raises benchmark.ConfigError naming the field."""
    config_util.validate(c)
    judge_configs = benchmark.judge_configs(c)
    benchmark.check_ks(c.eval.ks)
    benchmark.check_engine(c)
    return {m: judged_as_exported(c, m, jc) for m, jc in judge_configs.items()}


def judged_as_exported(c, method: str, jc: api.JudgeConfig) -> api.JudgeConfig:
    """A judge exported by a training experiment carries the settings it was trained and evaluated with
    (<export>/judge_settings.json: prompt, verdict mode, limits); they replace the preset's, except the fields
    given on the command line (--config.judge.X, --config.per_method.M.X). The method stays the config's."""
    if not os.path.isdir(c.model or ""):  # a registered name or a GGUF file carries no settings
        return jc
    model_dir = c.model
    explicit = cli.overridden("judge") | cli.overridden(f"per_method.{method}") | {"method"}
    explicit |= set((c.per_method.get(method) or {}) if "per_method" in c else {})
    return settings.apply(jc, model_dir, explicit=explicit)


def main(argv):
    del argv
    c, workdir = cli.config(), cli.workdir()
    t0 = time.time()
    try:  # config and data first: a mistake fails in seconds, not after the model has loaded
        judge_configs = check_config(c)
        data_skipped: dict = {}  # {set: rows its files could not give as pairs}: counted in the report
        data = benchmark.eval_sets(c.eval, c.seed, data_skipped)
        mesh = experiment.mesh(c)
        if distributed.is_main_process():
            runs.lock(workdir)  # one process per directory: a second one is refused, naming the first's pid
    except (benchmark.ConfigError, sources.DataError, settings.SettingsError, ValueError) as e:
        cli.fail(e)

    model = experiment.load(c, mesh)
    engine = experiment.engine(c, model, mesh)
    logging.info("model %s loaded in %.1fs", model.path, time.time() - t0)

    reports, scored = {}, {}
    os.makedirs(workdir, exist_ok=True)
    for method, jc in judge_configs.items():
        judge = api.Judge(model, jc, engine=engine)
        for name, recs in data.items():
            key = f"{name}/{method}"
            path = os.path.join(workdir, f"judgments-{name}-{method}.jsonl") if distributed.is_main_process() else None
            if c.eval.format in benchmarks.FORMATS and c.eval.path:  # scored by the benchmark's official rules
                scored[key] = benchmarks.evaluate(judge, c.eval.format, recs)
                print(benchmarks.table(key, scored[key]), flush=True)
                continue
            reports[key] = benchmark.evaluate(judge, recs, seed=c.seed, ks=tuple(c.eval.ks), judgments_path=path,
                                              data_skipped=data_skipped.get(name, ()))
            print(benchmark.category_table(key, reports[key]), flush=True)
            if c.eval.get("bias", True):  # position, length and master-key attack (judge/bias.py)
                n = c.eval.get("bias_pairs", 0) or len(recs)
                reports[key]["bias"] = bias.bias_report(judge, recs[:n], attack_pairs=c.eval.get("bias_attack_pairs"))
                print(bias.bias_table(key, reports[key]["bias"]), flush=True)

    meta = {"model": c.model, "preset": c.preset,
            "judges": {m: dataclasses.asdict(jc) for m, jc in judge_configs.items()},
            "wall_seconds": round(time.time() - t0, 1), **({"benchmark_scores": scored} if scored else {})}
    if not distributed.is_main_process():  # one report per run: process 0 writes it
        return
    paths = evaluation.write_report(workdir, reports, meta)
    print(f"wall time {meta['wall_seconds']}s; wrote {', '.join(paths.values())}", flush=True)


if __name__ == "__main__":
    cli.run(main, CONFIG_FILE)
