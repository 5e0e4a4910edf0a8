"""Where the time of one STaR-DPO iteration goes: sampling, the DPO reference pass, training and evaluation.

    python -m experiments.bench_star [--preset default] [--pairs N] [--workdir DIR]

Runs iteration 1 of experiments/star_dpo.py's loop on the preset's data (its first part of the training pairs,
or the first N of them with --pairs), with the library's own pieces and nothing cached: the sampling judge
(star.loop.sampling_judge) samples and selects (star.loop.iteration_records), finetune.fit computes the
reference log-probs and trains, recipe.evaluate judges the held-out sets. Prints one JSON object:

- `seconds`: load (model + engine), sampling, reference, training (finetune.fit's own split; compilation
  included), fit_other (the rest of fit: tokenising, batching, checkpoints), evaluation, total;
- `tokens_per_s`: sampling = (generated tokens + tokens of the forced-verdict scoring passes) / sampling
  seconds; reference = tokens of the training examples / reference seconds; training = fit's `tokens` /
  training seconds (and `training_steady`: the median per-step rate after the first, compiling, step);
  evaluation = (generated + scored tokens) / evaluation seconds;
- `tokens`: the counts behind them (prompt tokens prefilled, generated, scored) per phase;
- `peak_rss_gb`: VmHWM of this process; plus the sizes (pairs, judgments, training records, steps).

Everything else (progress, tables) goes to stderr, the JSON alone to stdout.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time


class TokenCounter:
    """Wraps an Engine's generate and score_next_token to count the tokens they process."""

    def __init__(self, engine):
        self.reset()
        gen, score = engine.generate, engine.score_next_token

        def generate(prompts, sp, **kw):
            out = gen(prompts, sp, **kw)
            self.prefilled += sum(len(p) for p in prompts)
            self.generated += sum(len(c.token_ids) for cs in out for c in cs)
            return out

        def score_next_token(prompts, candidates, **kw):
            self.scored += sum(len(p) for p in prompts)
            return score(prompts, candidates, **kw)

        engine.generate, engine.score_next_token = generate, score_next_token

    def reset(self):
        self.prefilled = self.generated = self.scored = 0

    def take(self) -> dict:
        out = {"prefilled": self.prefilled, "generated": self.generated, "scored": self.scored}
        self.reset()
        return out


def _rate(tokens, seconds):
    return round(tokens / seconds, 1) if tokens and seconds else None


def _steady_rate(metrics_path: str) -> float | None:
    if not os.path.exists(metrics_path):
        return None
    with open(metrics_path) as f:
        rates = [json.loads(line).get("tok_s") for line in f if line.strip()]
    rates = [r for r in rates[1:] if r]
    return round(statistics.median(rates), 1) if rates else None


def bench(preset: str, pairs: int | None, workdir: str) -> dict:
    from experiments.configs import star_dpo as config_module
    from experiments.machine import peak_rss_gb
    from genrm_jax import finetune, recipe, runs
    from genrm_jax.io import load_model
    from genrm_jax.judge import api, benchmark
    from genrm_jax.sampling import Engine
    from genrm_jax.star import loop

    c = config_module.get_config(preset)
    star = loop.StarConfig.from_config(c.star)
    ft = finetune.FinetuneConfig.from_config(c.train, kind=star.loss())
    judge_cfg = benchmark.judge_config(c.judge)
    benchmark.check_engine(c)
    ks = benchmark.check_ks(c.eval.ks)
    train, eval_sets = recipe.data(c.data, c.seed)
    part = recipe.parts(train, star.parts, c.seed)[0]
    if pairs:
        part = part[:pairs]
    run = runs.Run(workdir, c)
    seconds, tokens = {}, {}

    t0 = time.perf_counter()
    model = load_model(c.model)
    engine = Engine(model, max_batch=c.engine.max_batch, cache_dtype=c.engine.cache_dtype)
    counter = TokenCounter(engine)
    seconds["load"] = time.perf_counter() - t0

    t = 1
    sampler = loop.sampling_judge(model, engine, star, judge_cfg, seed=c.seed + 1000 * t)
    t0 = time.perf_counter()
    records, summary = loop.iteration_records(star, sampler, part, run, t, progress=False)
    seconds["sampling"] = time.perf_counter() - t0
    tokens["sampling"] = counter.take()
    if not records:
        raise SystemExit(f"bench_star: nothing to train on after sampling ({summary}); try more --pairs")

    ft_t = dataclasses.replace(ft, kind=star.loss(), seed=ft.seed + t)
    t0 = time.perf_counter()
    params, info = finetune.fit(model.params, records, ft_t, model.config, model.tokenizer,
                                run.path("train", f"iter_{t}"), progress=False)
    fit_seconds = time.perf_counter() - t0
    seconds["reference"] = info["seconds"]["reference"]
    seconds["training"] = info["seconds"]["train"]
    seconds["fit_other"] = max(0.0, fit_seconds - seconds["reference"] - seconds["training"])
    tokens["reference"] = info["tokens"] // max(1, ft_t.epochs)  # each example once
    tokens["training"] = info["tokens"]

    engine.set_params(params)
    judge = api.Judge(model, judge_cfg, engine=engine)
    counter.reset()
    t0 = time.perf_counter()
    reports = recipe.evaluate(run, f"eval_{t}", judge, eval_sets, seed=c.seed, ks=ks, progress=False)
    seconds["evaluation"] = time.perf_counter() - t0
    tokens["evaluation"] = counter.take()
    seconds["total"] = sum(seconds.values())

    s, e = tokens["sampling"], tokens["evaluation"]
    return {
        "preset": preset, "model": c.model, "pairs": len(part), "samples_per_pair": star.samples,
        "judgments": summary["sampled"]["judgments"], "training_records": len(records), "train_steps": info["steps"],
        "eval_pairs": {k: len(v) for k, v in eval_sets.items()},
        "eval_accuracy": {k: v["accuracy"] for k, v in reports.items()},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "tokens_per_s": {
            "sampling": _rate(s["generated"] + s["scored"], seconds["sampling"]),
            "sampling_generated": _rate(s["generated"], seconds["sampling"]),
            "reference": _rate(tokens["reference"], seconds["reference"]),
            "training": _rate(tokens["training"], seconds["training"]),
            "training_steady": _steady_rate(run.path("train", f"iter_{t}", "metrics.jsonl")),
            "evaluation": _rate(e["generated"] + e["scored"], seconds["evaluation"]),
        },
        "tokens": tokens,
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default", help="experiments/configs/presets.py preset (default: default)")
    p.add_argument("--pairs", type=int, default=None, help="sample and train on only the first N pairs of the part")
    p.add_argument("--workdir", default=None, help="keep the run here (default: a temporary directory, removed)")
    a = p.parse_args(argv)
    if a.pairs is not None and a.pairs < 1:
        p.error("--pairs must be >= 1")
    from genrm_jax import runtime

    runtime.apply()
    with contextlib.ExitStack() as stack:
        workdir = a.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_star-"))
        if a.workdir and os.path.exists(os.path.join(a.workdir, "config.json")):
            p.error(f"--workdir {a.workdir} holds a run already: a benchmark starts from nothing")
        with contextlib.redirect_stdout(sys.stderr):
            result = bench(a.preset, a.pairs, workdir)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
