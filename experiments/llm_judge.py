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

from genrm_jax import cli, distributed, evaluation, recipe
from genrm_jax.data import sources
from genrm_jax.judge import benchmark

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "llm_judge.py")


def check_config(c) -> dict:
    """Every check that needs no model: {method: JudgeConfig}. Raises benchmark.ConfigError naming the field."""
    judge_configs = benchmark.judge_configs(c)
    benchmark.check_ks(c.eval.ks)
    benchmark.check_engine(c)
    return judge_configs


def main(argv):
    del argv
    c, workdir = cli.config(), cli.workdir()
    t0 = time.time()
    try:  # config and data first: a mistake fails in seconds, not after the model has loaded
        judge_configs = check_config(c)
        data = benchmark.eval_sets(c.eval, c.seed)
        mesh = recipe.mesh(c)
    except (benchmark.ConfigError, sources.DataError, ValueError) as e:
        cli.fail(e)

    from genrm_jax.judge import api

    model = recipe.load(c, mesh)
    engine = recipe.engine(c, model, mesh)
    logging.info("model %s loaded in %.1fs", model.path, time.time() - t0)

    reports = {}
    os.makedirs(workdir, exist_ok=True)
    for method, jc in judge_configs.items():
        judge = api.Judge(model, jc, engine=engine)
        for name, recs in data.items():
            key = f"{name}/{method}"
            path = os.path.join(workdir, f"judgments-{name}-{method}.jsonl") if distributed.is_main_process() else None
            reports[key] = benchmark.evaluate(judge, recs, seed=c.seed, ks=tuple(c.eval.ks), judgments_path=path)
            print(benchmark.category_table(key, reports[key]), flush=True)

    meta = {"model": c.model, "preset": c.preset,
            "judges": {m: dataclasses.asdict(jc) for m, jc in judge_configs.items()},
            "wall_seconds": round(time.time() - t0, 1)}
    if not distributed.is_main_process():  # one report per run: process 0 writes it
        return
    paths = evaluation.write_report(workdir, reports, meta)
    print(f"wall time {meta['wall_seconds']}s; wrote {', '.join(paths.values())}", flush=True)


if __name__ == "__main__":
    cli.run(main, CONFIG_FILE)
