"""Where the time of one STaR-DPO iteration goes: sampling, the DPO reference pass, training and evaluation.

    python -m experiments.bench_star [--preset default] [--pairs N] [--workdir DIR] [--no-share-prefix]

Runs iteration 1 of experiments/star_dpo.py's loop on the preset's data (its first part of the training pairs,
or the first N of them with --pairs), with the library's own pieces and nothing cached: the sampling judge
(star.loop.sampling_judge) samples and selects (star.loop.iteration_records), finetune.fit computes the
reference log-probs and trains, report.evaluate judges the held-out sets. Prints one JSON object:

- `seconds`: load (model + engine), sampling, reference, training (finetune.fit's own split; compilation
  included), fit_other (the rest of fit: tokenising, batching, checkpoints), evaluation, total;
- `tokens_per_s`: sampling = (generated tokens + tokens of the forced-verdict scoring passes) / sampling
  seconds; reference = tokens of the training examples / reference seconds; training = fit's `tokens` /
  training seconds (and `training_steady`: the median per-step rate after the first, compiling, step);
  evaluation = (generated + scored tokens) / evaluation seconds;
- `tokens`: the counts behind them per phase: sampling and evaluation {"prefilled" (prompt tokens, each
  distinct prompt once, the prefix that all prompts of a call share once a call), "generated", "scored" (tokens
  run through the model to read a forced verdict: the appended tokens scored from a row's KV cache plus any
  sequence scored by a prefill of its own),
  "scored_from_cache" (of those, the appended ones), "reused_from_cache" (generated tokens a forced verdict read
  from the cache instead of running them again)}; reference and training: the examples' tokens;
- `compile_seconds`: per phase, the time JAX spent tracing, lowering and compiling (jax.monitoring events),
  included in `seconds` ("fit": the reference pass and training together);
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
    """The tokens an Engine processed since the last `take` (from its `stats`)."""

    def __init__(self, engine):
        self.engine = engine
        self.reset()

    def reset(self):
        self.start = dict(self.engine.stats)

    def take(self) -> dict:
        d = {k: v - self.start.get(k, 0) for k, v in self.engine.stats.items()}
        self.reset()
        return {"prefilled": d.get("prefill_tokens", 0), "generated": d.get("generated_tokens", 0),
                "scored": d.get("continuation_tokens", 0) + d.get("score_tokens", 0),
                "scored_from_cache": d.get("continuation_tokens", 0),
                "reused_from_cache": d.get("continuation_reused", 0)}


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling (jax.monitoring duration events), taken per phase."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        import jax

        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event, duration, **_):
        if event in self.EVENTS:
            self.seconds += duration

    def take(self) -> float:
        out, self.seconds = self.seconds, 0.0
        return round(out, 2)


def _rate(tokens, seconds):
    return round(tokens / seconds, 1) if tokens and seconds else None


def _steady_rate(metrics_path: str) -> float | None:
    if not os.path.exists(metrics_path):
        return None
    with open(metrics_path) as f:
        rates = [json.loads(line).get("tok_s") for line in f if line.strip()]
    rates = [r for r in rates[1:] if r]
    return round(statistics.median(rates), 1) if rates else None


def bench(preset: str, pairs: int | None, workdir: str, share_prefix: bool = True) -> dict:
    from experiments.configs import star_dpo as config_module
    from experiments.machine import peak_rss_gb
    from genrm_jax import finetune, methods, report, runs
    from genrm_jax.data import splits
    from genrm_jax.io import load_model
    from genrm_jax.judge import api, benchmark
    from genrm_jax.sampling import Engine
    from genrm_jax.star import loop

    c = config_module.get_config(preset)
    star = loop.StarConfig.from_config(c.star)
    method = methods.of_config(c)
    ft = finetune.FinetuneConfig.from_config(c.train, kind=method.loss)
    judge_cfg = benchmark.judge_config(c.judge)
    benchmark.check_engine(c)
    ks = benchmark.check_ks(c.eval.ks)
    train, eval_sets = splits.experiment_data(c.data, c.seed)
    part = splits.parts(train, star.parts, c.seed)[0]
    if pairs:
        part = part[:pairs]
    run = runs.Run(workdir, c)
    seconds, tokens, compile_s = {}, {}, {}
    clock = CompileClock()

    t0 = time.perf_counter()
    model = load_model(c.model)
    engine = Engine(model, max_batch=c.engine.max_batch, cache_dtype=c.engine.cache_dtype, share_prefix=share_prefix)
    counter = TokenCounter(engine)
    seconds["load"] = time.perf_counter() - t0
    compile_s["load"] = clock.take()

    t = 1
    sampler = loop.sampling_judge(model, engine, star, judge_cfg, seed=c.seed + 1000 * t)
    t0 = time.perf_counter()
    records, summary = loop.iteration_records(method, star, sampler, part, run, t, progress=False)
    seconds["sampling"] = time.perf_counter() - t0
    tokens["sampling"] = counter.take()
    compile_s["sampling"] = clock.take()
    if not records:
        raise SystemExit(f"bench_star: nothing to train on after sampling ({summary}); try more --pairs")

    ft_t = dataclasses.replace(ft, seed=ft.seed + t)
    t0 = time.perf_counter()
    params, info = finetune.fit(model.params, records, ft_t, model.config, model.tokenizer,
                                run.path("train", f"iter_{t}"), progress=False)
    fit_seconds = time.perf_counter() - t0
    compile_s["fit"] = clock.take()  # reference pass and training together
    seconds["reference"] = info["seconds"]["reference"]
    seconds["training"] = info["seconds"]["train"]
    seconds["fit_other"] = max(0.0, fit_seconds - seconds["reference"] - seconds["training"])
    tokens["reference"] = info["tokens"] // max(1, ft_t.epochs)  # each example once
    tokens["training"] = info["tokens"]

    engine.set_params(params)
    judge = api.Judge(model, judge_cfg, engine=engine)
    counter.reset()
    clock.take()
    t0 = time.perf_counter()
    reports = report.evaluate(run, f"eval_{t}", judge, eval_sets, seed=c.seed, ks=ks, progress=False)
    seconds["evaluation"] = time.perf_counter() - t0
    tokens["evaluation"] = counter.take()
    compile_s["evaluation"] = clock.take()
    seconds["total"] = sum(seconds.values())

    s, e = tokens["sampling"], tokens["evaluation"]
    return {
        "preset": preset, "model": c.model, "share_prefix": share_prefix, "pairs": len(part),
        "samples_per_pair": star.samples,
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
        "compile_seconds": compile_s,
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default", help="experiments/configs/presets.py preset (default: default)")
    p.add_argument("--pairs", type=int, default=None, help="sample and train on only the first N pairs of the part")
    p.add_argument("--workdir", default=None, help="keep the run here (default: a temporary directory, removed)")
    p.add_argument("--no-share-prefix", dest="share_prefix", action="store_false",
                   help="prefill every prompt whole (Engine(share_prefix=False)): the baseline of the shared prefix")
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
            result = bench(a.preset, a.pairs, workdir, a.share_prefix)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
