"""Load test of the judge server (genrm_jax/serve.py): requests per second and latency at a given concurrency.

    python -m experiments.bench_serve --model tiny-random --concurrency 8 --requests 64
    python -m experiments.bench_serve --model smollm2-135m-instruct --method genrm --requests 32

The server runs in this process on 127.0.0.1 (a free port); `concurrency` client threads send `requests` POST
/v1/compare calls of one RewardBench pair each (the bundled sample, answers cut to `max_answer_tokens`) with
urllib. Two untimed passes over the same requests compile the engine's shapes first; the third is timed.
Prints one JSON object: requests/s, latency p50 / p99 (seconds), pairs per judge call (mean, max) and the
engine's tokens per second.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import re
import time
import urllib.request

import numpy as np

from genrm_jax import runtime, serve
from genrm_jax.data import sources


def post(url: str, body: dict) -> float:
    t = time.perf_counter()
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
    return time.perf_counter() - t


def run_pass(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float]]:
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(lambda b: post(url + "/v1/compare", b), bodies))
    return time.perf_counter() - t, latencies


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--method", default="cot", choices=("cot", "genrm"))
    p.add_argument("--verdict", default="force")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-answer-tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    args = p.parse_args()
    runtime.apply()
    fields = {"method": args.method, "max_answer_tokens": args.max_answer_tokens}
    if args.method == "cot":
        fields.update(verdict=args.verdict, max_new_tokens=args.max_new_tokens, temperature=1.0)
    t0 = time.time()
    service = serve.build(args.model, fields, serve.ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms))
    load_s = time.time() - t0
    records = sources.load("rewardbench", sources.REWARDBENCH)[: args.requests]
    bodies = [{"pairs": [{"prompt": r["prompt"], "a": r["chosen"], "b": r["rejected"]}]} for r in records]
    running = serve.Running(service.app())
    try:
        t0 = time.time()
        for _ in range(2):  # compile the shapes this load produces
            run_pass(running.url, bodies, args.concurrency)
        warm_s = time.time() - t0
        before = urllib.request.urlopen(running.url + "/metrics").read().decode()
        wall, lat = run_pass(running.url, bodies, args.concurrency)
        after = urllib.request.urlopen(running.url + "/metrics").read().decode()
    finally:
        running.stop()
    batches = metric(after, "genrm_batch_pairs_count") - metric(before, "genrm_batch_pairs_count")
    pairs = metric(after, "genrm_batch_pairs_sum") - metric(before, "genrm_batch_pairs_sum")
    tokens = sum(metric(after, f'genrm_tokens_total{{kind="{k}"}}') - metric(before, f'genrm_tokens_total{{kind="{k}"}}')
                 for k in ("prompt", "generated"))
    engine_s = metric(after, "genrm_engine_seconds_total") - metric(before, "genrm_engine_seconds_total")
    print(json.dumps({
        "model": args.model, "judge": {k: v for k, v in vars(service.judge.config).items()
                                       if k in ("method", "verdict", "max_new_tokens", "max_answer_tokens", "position")},
        "concurrency": args.concurrency, "requests": len(bodies), "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms, "requests_per_s": round(len(bodies) / wall, 3),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 3), "latency_p99_s": round(float(np.percentile(lat, 99)), 3),
        "pairs_per_judge_call": round(pairs / max(batches, 1), 2), "engine_tokens_per_s": round(tokens / max(engine_s, 1e-9), 1),
        "load_s": round(load_s, 1), "warmup_s": round(warm_s, 1), "timed_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
