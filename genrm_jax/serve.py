r"""The judge as an HTTP service for RL trainers: one process holds the model and batches the requests of many
rollout workers into engine calls.

  python -m genrm_jax.serve --model smollm2-135m-instruct --port 8000
  python -m genrm_jax.serve --model runs/star_dpo/export            # its judge_settings.json applies
  curl -s localhost:8000/v1/compare -d '{"pairs": [{"prompt": "2+2?", "a": "4", "b": "5"}]}'

Routes (JSON in, JSON out; starlette on uvicorn, the `serve` extra of setup.py):
- POST /v1/compare  {"pairs": [{"prompt": str | [{"role", "content"}, ...], "a": str, "b": str}, ...]}
    -> {"results": [{"p_a", "verdict" ("A" | "B" | "tie"), "votes" ([orders][k] of "A" / "B" / null),
                     "rationales", "truncated"}, ...]}
- POST /v1/reward   {"items": [{"prompt", "response", "reference"}, ...]} -> {"rewards": [...], "p_better": [...]}:
    r(x, y) - r(x, y_ref) = log p / (1 - p), p = P(response beats reference) (Mahan et al., Eq. 6);
    or {"groups": [{"prompt", "responses": [y_1, ..., y_n]}, ...]} -> {"rewards": [[...], ...]}: each response
    against each other one of its group, once per unordered pair (P(j beats i) = 1 - P(i beats j)), its
    log-odds averaged: rewards of a group sum to 0, for GRPO-style group baselines.
- POST /v1/score    {"items": [{"prompt", "response", "rubric"?, "reference"?}, ...]} -> {"results": [{"score" 1-5,
    "dist" (P of 1..5, forced verdicts), "expected", "rationale", "truncated"}]} (judge/pointwise.py; cot/genrm).
- POST /get_reward  OpenRLHF's remote reward model (openrlhf/utils/agent.py sends {"query": [prompt + response
    text], "prompts": [prompt text], "labels": [reference answer]}; openrlhf/cli/serve_rm.py answers {"rewards",
    "scores", "extra_logs"}): the response is the query after its prompt, judged against the label (Eq. 6).
- GET /health, GET /metrics (Prometheus text: requests by route and status, batches and their sizes, queue
    length, prompt / generated tokens and tokens per second of engine time).

Batching: requests go into a bounded queue (`ServeConfig.max_queue`; full -> 503). One worker thread takes the
first waiting request, gathers more until `max_batch` pairs or `max_wait_ms`, and judges them in one
`Judge.compare` call. The engine's samples depend only on (seed, prompt, sample index) (sampling/engine.py), so
a pair gets the same verdicts whatever shares its batch, and the same as the offline `Judge` with the same
config; `position="swap"` (which draws the order from the pair's index in a call) is refused for that reason.

Errors: malformed JSON, a missing, mistyped or unknown field -> 400; a body over `max_body_bytes`, more than
`max_pairs` pairs in a request, or a pair the model's context cannot hold (api.Judge's `skipped`) -> 413. The
body is {"error": {"field": "pairs[3].a", "message": ...}}. An exception inside the judge fails the requests
of that batch with 500; the server keeps serving.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from typing import Callable

import jax.numpy as jnp
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from genrm_jax import runtime
from genrm_jax.io import load_model, registry
from genrm_jax.judge import api, pointwise, prompts, settings
from genrm_jax.sampling import Engine

log = logging.getLogger(__name__)
ROLES = ("user", "assistant", "system")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 16          # pairs (or scored responses) gathered into one judge call
    max_wait_ms: float = 10.0    # how long the first request of a batch waits for company
    max_queue: int = 256         # requests waiting for the worker; one more is answered 503
    max_pairs: int = 256         # pairs (responses) in one request; more is answered 413
    max_body_bytes: int = 8 << 20

    def __post_init__(self):
        for f in ("max_batch", "max_queue", "max_pairs", "max_body_bytes"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ServeConfig.{f} must be an integer >= 1, got {v!r}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"ServeConfig.max_wait_ms must be >= 0, got {self.max_wait_ms!r}")


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, the offending `field` (a JSON path) and why."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message


# ------------------------------------------------------------------------------------------------ metrics


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Counters behind GET /metrics (Prometheus text format 0.0.4); thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()  # (route, status) -> n
        self.batches = 0
        self.batch_pairs = 0
        self.batch_max = 0
        self.batch_hist = [0] * len(BATCH_BUCKETS)
        self.tokens: collections.Counter = collections.Counter()  # "prompt" | "generated" -> n
        self.engine_seconds = 0.0
        self.last_tokens_per_second = 0.0

    def request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def batch(self, pairs: int) -> None:
        with self._lock:
            self.batches += 1
            self.batch_pairs += pairs
            self.batch_max = max(self.batch_max, pairs)
            for i, b in enumerate(BATCH_BUCKETS):
                if pairs <= b:
                    self.batch_hist[i] += 1

    def engine(self, prompt_tokens: int, generated: int, seconds: float) -> None:
        with self._lock:
            self.tokens["prompt"] += prompt_tokens
            self.tokens["generated"] += generated
            self.engine_seconds += seconds
            if seconds > 0:
                self.last_tokens_per_second = (prompt_tokens + generated) / seconds

    def text(self, queue_length: int) -> str:
        with self._lock:
            out = ["# HELP genrm_requests_total HTTP requests by route and status.",
                   "# TYPE genrm_requests_total counter"]
            out += [f'genrm_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())]
            out += ["# HELP genrm_batch_pairs Pairs (or scored responses) per judge call.",
                    "# TYPE genrm_batch_pairs histogram"]
            out += [f'genrm_batch_pairs_bucket{{le="{b}"}} {n}' for b, n in zip(BATCH_BUCKETS, self.batch_hist)]
            out += [f'genrm_batch_pairs_bucket{{le="+Inf"}} {self.batches}', f"genrm_batch_pairs_sum {self.batch_pairs}",
                    f"genrm_batch_pairs_count {self.batches}",
                    "# HELP genrm_batch_pairs_max The largest batch so far.", "# TYPE genrm_batch_pairs_max gauge",
                    f"genrm_batch_pairs_max {self.batch_max}",
                    "# HELP genrm_queue_length Requests waiting for the worker.", "# TYPE genrm_queue_length gauge",
                    f"genrm_queue_length {queue_length}",
                    "# HELP genrm_tokens_total Tokens through the engine: prompt (prefilled or scored) and generated.",
                    "# TYPE genrm_tokens_total counter"]
            out += [f'genrm_tokens_total{{kind="{k}"}} {self.tokens[k]}' for k in ("prompt", "generated")]
            out += ["# HELP genrm_engine_seconds_total Seconds spent in engine calls.",
                    "# TYPE genrm_engine_seconds_total counter", f"genrm_engine_seconds_total {self.engine_seconds:.6f}",
                    "# HELP genrm_tokens_per_second Prompt + generated tokens per engine second, last engine call.",
                    "# TYPE genrm_tokens_per_second gauge",
                    f"genrm_tokens_per_second {self.last_tokens_per_second:.3f}"]
            return "\n".join(out) + "\n"


class CountingEngine:
    """An Engine that counts tokens and engine time into `Metrics` (everything else is the engine's own)."""

    def __init__(self, engine, metrics: Metrics):
        self._engine, self._metrics = engine, metrics

    def generate(self, prompt_ids, sp, **kw):
        t = time.perf_counter()
        out = self._engine.generate(prompt_ids, sp, **kw)
        generated = sum(len(c.token_ids) for cs in out for c in cs)
        self._metrics.engine(sum(len(p) for p in prompt_ids), generated, time.perf_counter() - t)
        return out

    def score_next_token(self, prompt_ids, candidates):
        t = time.perf_counter()
        out = self._engine.score_next_token(prompt_ids, candidates)
        self._metrics.engine(sum(len(p) for p in prompt_ids), 0, time.perf_counter() - t)
        return out

    def __getattr__(self, name):
        return getattr(self._engine, name)


# ------------------------------------------------------------------------------------------------ batching


@dataclasses.dataclass
class Work:
    """One request's share of a batch: `kind` "compare" (inputs: (conversation, a, b)) or "score" (inputs:
    pointwise items); `names`: the request field of each input, for errors."""
    kind: str
    inputs: list
    names: list[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class Batcher:
    """A bounded queue and one worker thread that gathers requests into judge calls (see the module docstring).
    `run[kind](inputs) -> (one result per input, {input index: reason it could not be judged})`."""

    def __init__(self, run: dict[str, Callable], config: ServeConfig, metrics: Metrics):
        self.run, self.config, self.metrics = run, config, metrics
        self.queue: queue.Queue = queue.Queue(maxsize=config.max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="genrm-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def submit(self, work: Work) -> None:
        try:
            self.queue.put_nowait(work)
        except queue.Full:
            raise RequestError(503, "queue", f"{self.config.max_queue} requests are waiting; retry later") from None

    def _gather(self) -> list[Work] | None:
        try:
            first = self.queue.get(timeout=0.1)
        except queue.Empty:
            return None
        batch, size = [first], len(first.inputs)
        deadline = time.monotonic() + self.config.max_wait_ms / 1000.0
        while size < self.config.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                work = self.queue.get(timeout=remaining)
            except queue.Empty:
                break
            batch.append(work)
            size += len(work.inputs)
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._gather()
            if batch:
                for kind in dict.fromkeys(w.kind for w in batch):
                    self._judge(kind, [w for w in batch if w.kind == kind])

    def _judge(self, kind: str, works: list[Work]) -> None:
        inputs = [x for w in works for x in w.inputs]
        self.metrics.batch(len(inputs))
        try:
            results, skipped = self.run[kind](inputs)
        except Exception as e:  # a failure of the judge fails this batch, never the server
            log.exception("judging a batch of %d failed", len(inputs))
            for w in works:
                _resolve(w, RequestError(500, "judge", f"{type(e).__name__}: {e}"))
            return
        start = 0
        for w in works:
            end = start + len(w.inputs)
            bad = [(i - start, skipped[i]) for i in range(start, end) if i in skipped]
            if bad:
                i, reason = bad[0]
                _resolve(w, RequestError(413, w.names[i], reason))
            else:
                _resolve(w, results[start:end])
            start = end


def _resolve(work: Work, value) -> None:
    def finish():
        if work.future.done():  # the client went away
            return
        if isinstance(value, Exception):
            work.future.set_exception(value)
        else:
            work.future.set_result(value)

    work.loop.call_soon_threadsafe(finish)


# ------------------------------------------------------------------------------------------------ requests


def _check_keys(obj: dict, where: str, required: tuple, optional: tuple = ()) -> None:
    for k in obj:
        if k not in required and k not in optional:
            raise RequestError(400, f"{where}.{k}" if where else k,
                               f"unknown field; expected {', '.join(required + optional)}")
    for k in required:
        if k not in obj:
            raise RequestError(400, f"{where}.{k}" if where else k, "missing")


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise RequestError(400, where, f"must be an object, got {type(value).__name__}")
    return value


def _list(value, where: str, max_len: int, *, min_len: int = 1) -> list:
    if not isinstance(value, list):
        raise RequestError(400, where, f"must be a list, got {type(value).__name__}")
    if len(value) < min_len:
        raise RequestError(400, where, f"must hold at least {min_len} item{'s' if min_len > 1 else ''}")
    if len(value) > max_len:
        raise RequestError(413, where, f"{len(value)} items; at most {max_len} per request (ServeConfig.max_pairs)")
    return value


def _text(value, where: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise RequestError(400, where, f"must be a string, got {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise RequestError(400, where, "is empty")
    return value


def conversation(value, where: str) -> list[dict]:
    """A prompt as the judge takes it: a string is one user turn; a list of {role, content} must end with a user
    turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, where)}]
    if not isinstance(value, list) or not value:
        raise RequestError(400, where, "must be a string or a non-empty list of {role, content} messages")
    out = []
    for i, m in enumerate(value):
        m = _object(m, f"{where}[{i}]")
        _check_keys(m, f"{where}[{i}]", ("role", "content"))
        if m["role"] not in ROLES:
            raise RequestError(400, f"{where}[{i}].role", f"must be one of {', '.join(ROLES)}, got {m['role']!r}")
        out.append({"role": m["role"], "content": _text(m["content"], f"{where}[{i}].content", empty_ok=True)})
    if out[-1]["role"] != "user":
        raise RequestError(400, where, f"must end with a user turn, ends with {out[-1]['role']!r}")
    return out


_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|$)", re.S)


def prompt_from_text(text: str) -> list[dict]:
    """OpenRLHF sends the prompt rendered by the policy's chat template. A ChatML rendering is read back into its
    turns (an empty trailing assistant turn, the generation prompt, dropped); other text is one user turn."""
    turns = [{"role": r, "content": c.strip()} for r, c in _CHATML.findall(text) if r in ROLES]
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()
    if turns and turns[-1]["role"] == "user":
        return turns
    return [{"role": "user", "content": text.strip() or text}]


def verdict(p: float) -> str:
    return "A" if p > 0.5 else "B" if p < 0.5 else "tie"


_VOTE = {api.VOTE_A: "A", api.VOTE_B: "B", api.INVALID: None}


# ------------------------------------------------------------------------------------------------ service


class Service:
    """The routes over a judge (see the module docstring). `judge`: api.Judge (or anything with its `compare` and
    `config`); `pointwise`: a judge.pointwise.PointwiseJudge for /v1/score, or None (then /v1/score answers 400)."""

    def __init__(self, judge, pointwise_judge=None, config: ServeConfig = ServeConfig(), *,
                 metrics: Metrics | None = None, eos_strings: tuple[str, ...] = ()):
        if judge.config.position == "swap":
            raise ValueError("position 'swap' draws each pair's order from its index in a judge call, so a served "
                             "verdict would depend on its batch; serve with position 'fixed' or 'both'")
        self.judge, self.pointwise, self.config = judge, pointwise_judge, config
        self.metrics = metrics or Metrics()
        self.eos_strings = tuple(s for s in eos_strings if s)
        self.batcher = Batcher({"compare": self._compare, "score": self._score}, config, self.metrics)

    # -- engine side (the worker thread only)

    def _compare(self, inputs):
        convs, a, b = zip(*inputs)
        j = self.judge.compare(list(convs), list(a), list(b))
        results = []
        for i in range(len(inputs)):
            results.append({"p_a": float(j.p_a[i]), "verdict": verdict(float(j.p_a[i])),
                            "votes": [[_VOTE[int(v)] for v in order] for order in j.votes[i]],
                            "rationales": list(j.rationales[i]),
                            "truncated": bool(j.truncated[i]) if len(j.truncated) else False})
        return results, dict(j.skipped)

    def _score(self, items):
        scored = self.pointwise.score(items)
        results, skipped = [], {}
        for i, s in enumerate(scored):
            if s["skipped"]:
                skipped[i] = s["skipped"]
            x = s["judgments"][0] if s["judgments"] else {}
            results.append({"score": x.get("score"), "dist": x.get("dist"), "expected": x.get("expected"),
                            "rationale": x.get("text"), "truncated": s["truncated"]})
        return results, skipped

    # -- HTTP side

    async def _submit(self, kind: str, inputs: list, names: list[str]):
        loop = asyncio.get_running_loop()
        work = Work(kind, inputs, names, loop, loop.create_future())
        self.batcher.submit(work)
        return await work.future

    async def _body(self, request: Request) -> dict:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.config.max_body_bytes:
            raise RequestError(413, "body", f"{length} bytes; at most {self.config.max_body_bytes}")
        raw = await request.body()
        if len(raw) > self.config.max_body_bytes:
            raise RequestError(413, "body", f"{len(raw)} bytes; at most {self.config.max_body_bytes}")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            raise RequestError(400, "body", f"invalid JSON ({getattr(e, 'msg', e)}{where})") from None
        return _object(body, "body")

    def _handler(self, route: str, fn):
        async def handle(request: Request):
            try:
                out = await fn(request)
                status = 200
            except RequestError as e:
                out, status = {"error": {"field": e.field, "message": e.message}}, e.status
            except Exception as e:  # never let one request take the server down
                log.exception("%s failed", route)
                out, status = {"error": {"field": "", "message": f"{type(e).__name__}: {e}"}}, 500
            self.metrics.request(route, status)
            return JSONResponse(out, status_code=status)
        return handle

    async def compare(self, request: Request) -> dict:
        body = await self._body(request)
        _check_keys(body, "", ("pairs",))
        inputs, names = self._triples(body, "pairs", ("prompt", "a", "b"))
        return {"results": await self._submit("compare", inputs, names)}

    def _triples(self, body: dict, key: str, fields: tuple[str, str, str]) -> tuple[list, list]:
        """(conversation, first answer, second answer) of each object in body[key], and where each came from; a
        bad object raises RequestError naming its field."""
        inputs, names = [], []
        for i, obj in enumerate(_list(body[key], key, self.config.max_pairs)):
            where = f"{key}[{i}]"
            obj = _object(obj, where)
            _check_keys(obj, where, fields)
            prompt, a, b = fields
            inputs.append((conversation(obj[prompt], f"{where}.{prompt}"), _text(obj[a], f"{where}.{a}"),
                           _text(obj[b], f"{where}.{b}")))
            names.append(where)
        return inputs, names

    async def reward(self, request: Request) -> dict:
        body = await self._body(request)
        forms = [k for k in ("items", "groups") if k in body]
        if len(forms) != 1:
            extra = [k for k in body if k not in ("items", "groups")]
            raise RequestError(400, extra[0] if extra else "body",
                               "unknown field; expected one of items, groups" if extra else
                               "expected exactly one of items (against a reference) or groups (within a group)")
        _check_keys(body, "", (forms[0],))
        eps = self.judge.config.reward_eps
        if forms[0] == "items":
            inputs, names = self._triples(body, "items", ("prompt", "response", "reference"))
            res = await self._submit("compare", inputs, names)
            p = np.array([r["p_a"] for r in res])
            return {"rewards": api.log_odds(p, eps).tolist(), "p_better": p.tolist()}
        groups = _list(body["groups"], "groups", self.config.max_pairs)
        inputs, names, index = [], [], []
        for g, grp in enumerate(groups):
            where = f"groups[{g}]"
            grp = _object(grp, where)
            _check_keys(grp, where, ("prompt", "responses"))
            conv = conversation(grp["prompt"], f"{where}.prompt")
            responses = [_text(r, f"{where}.responses[{i}]")
                         for i, r in enumerate(_list(grp["responses"], f"{where}.responses", self.config.max_pairs,
                                                     min_len=2))]
            for i in range(len(responses)):
                for j in range(i + 1, len(responses)):
                    inputs.append((conv, responses[i], responses[j]))
                    names.append(f"{where}.responses")
                    index.append((g, i, j, len(responses)))
        if len(inputs) > self.config.max_pairs:
            raise RequestError(413, "groups", f"{len(inputs)} comparisons; at most {self.config.max_pairs} per request")
        res = await self._submit("compare", inputs, names)
        sums = [np.zeros(len(_object(grp, "")["responses"])) for grp in groups]
        for (g, i, j, n), r in zip(index, res):
            lo = float(api.log_odds(np.array([r["p_a"]]), eps)[0])  # log-odds of i over j; j over i is its negative
            sums[g][i] += lo
            sums[g][j] -= lo
        return {"rewards": [(s / (len(s) - 1)).tolist() for s in sums]}

    async def score(self, request: Request) -> dict:
        body = await self._body(request)
        if self.pointwise is None:
            raise RequestError(400, "route", "/v1/score needs a generative judge (method cot or genrm) whose "
                                             "tokenizer has single-token scores 1-5")
        _check_keys(body, "", ("items",))
        items = _list(body["items"], "items", self.config.max_pairs)
        inputs, names = [], []
        for i, it in enumerate(items):
            where = f"items[{i}]"
            it = _object(it, where)
            _check_keys(it, where, ("prompt", "response"), ("rubric", "reference"))
            item = {"conversation": conversation(it["prompt"], f"{where}.prompt"),
                    "response": _text(it["response"], f"{where}.response"),
                    "rubric": _text(it["rubric"], f"{where}.rubric") if it.get("rubric") is not None
                    else prompts.DEFAULT_RUBRIC}
            if it.get("reference") is not None:
                item["reference"] = _text(it["reference"], f"{where}.reference")
            inputs.append(item)
            names.append(where)
        return {"results": await self._submit("score", inputs, names)}

    async def openrlhf(self, request: Request) -> dict:
        body = await self._body(request)
        _check_keys(body, "", ("query", "prompts"), ("labels",))
        queries = _list(body["query"], "query", self.config.max_pairs)
        texts = _list(body["prompts"], "prompts", self.config.max_pairs)
        labels = body.get("labels")
        if labels is None:
            raise RequestError(400, "labels", "missing: the generative judge scores each response against a "
                                              "reference answer; send it as the label")
        labels = _list(labels, "labels", self.config.max_pairs)
        if not len(queries) == len(texts) == len(labels):
            raise RequestError(400, "query", f"{len(queries)} queries, {len(texts)} prompts and {len(labels)} "
                                             "labels: expected one of each per sample")
        inputs, names = [], []
        for i, (q, p, label) in enumerate(zip(queries, texts, labels)):
            q, p = _text(q, f"query[{i}]"), _text(p, f"prompts[{i}]")
            if not q.startswith(p):
                raise RequestError(400, f"query[{i}]", "does not start with prompts[i]: expected the prompt text "
                                                      "followed by the response")
            response = q[len(p):]
            for eos in self.eos_strings:  # the decoded query keeps special tokens: drop the end-of-turn marks
                while response.rstrip().endswith(eos):
                    response = response.rstrip()[:-len(eos)]
            inputs.append((prompt_from_text(p), _text(response.strip(), f"query[{i}]"),
                           _text(label, f"labels[{i}]")))
            names.append(f"query[{i}]")
        res = await self._submit("compare", inputs, names)
        p = np.array([r["p_a"] for r in res])
        rewards = api.log_odds(p, self.judge.config.reward_eps).tolist()
        return {"rewards": rewards, "scores": rewards, "extra_logs": {"p_better": p.tolist()}}

    async def health(self, request: Request) -> dict:
        return {"status": "ok", "method": self.judge.config.method, "queue": self.batcher.queue.qsize()}

    async def metrics_route(self, request: Request):
        self.metrics.request("/metrics", 200)
        return PlainTextResponse(self.metrics.text(self.batcher.queue.qsize()),
                                 media_type="text/plain; version=0.0.4")

    def app(self) -> Starlette:
        routes = [Route("/v1/compare", self._handler("/v1/compare", self.compare), methods=["POST"]),
                  Route("/v1/reward", self._handler("/v1/reward", self.reward), methods=["POST"]),
                  Route("/v1/score", self._handler("/v1/score", self.score), methods=["POST"]),
                  Route("/get_reward", self._handler("/get_reward", self.openrlhf), methods=["POST"]),
                  Route("/health", self._handler("/health", self.health), methods=["GET"]),
                  Route("/metrics", self.metrics_route, methods=["GET"])]

        @contextlib.asynccontextmanager
        async def lifespan(app):
            self.batcher.start()
            yield
            self.batcher.stop()

        return Starlette(routes=routes, lifespan=lifespan)


# ------------------------------------------------------------------------------------------------ running


class Running:
    """A uvicorn server in a background thread (tests, notebooks): `.url`, `.stop()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))  # port 0: a free one, known before the server starts
        self.host, self.port = host, self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


def build(model_name: str, judge_fields: dict, serve_config: ServeConfig, *, engine_batch: int | None = None
          ) -> Service:
    """The service for a model: `judge_fields` (the JudgeConfig fields given explicitly) over the model's
    judge_settings.json (judge/settings.py) over JudgeConfig's defaults; bt / pairrm read reward_head.npz."""
    model = load_model(model_name)
    config = settings.apply(api.JudgeConfig(**judge_fields), model.path, explicit=judge_fields)
    metrics = Metrics()
    engine = head = pw = None
    if config.method in ("cot", "genrm"):
        engine = CountingEngine(Engine(model, max_batch=engine_batch or 2 * serve_config.max_batch), metrics)
        try:
            pw = pointwise.PointwiseJudge(model, pointwise.PointwiseConfig(
                temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
                seed=config.seed, max_answer_tokens=config.max_answer_tokens,
                max_prompt_tokens=config.max_prompt_tokens), engine=engine)
        except ValueError as e:  # e.g. scores 1-5 that are not single tokens: /v1/score is off, the rest serves
            log.warning("/v1/score is off: %s", e)
    else:
        path = os.path.join(model.path, "reward_head.npz")
        if not os.path.exists(path):
            raise FileNotFoundError(f"method {config.method!r} needs the reward head {path} (an export of bt_rm or "
                                    f"pairrm)")
        head = {k: jnp.asarray(v) for k, v in np.load(path).items()}
    judge = api.Judge(model, config, engine=engine, head=head)
    tok = model.tokenizer
    eos = tuple(str(t) for t in (getattr(tok, "eos_token", None), getattr(tok, "pad_token", None)) if t)
    return Service(judge, pw, serve_config, metrics=metrics, eos_strings=eos)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m genrm_jax.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=registry.DEFAULT_MODEL, help="registered name, GGUF file or HF directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    judge_flags = {"method": str, "prompt": str, "k": int, "temperature": float, "top_p": float,
                   "max_new_tokens": int, "verdict": str, "position": str, "seed": int, "max_answer_tokens": int,
                   "max_prompt_tokens": int, "reward_eps": float}
    for name, kind in judge_flags.items():  # unset: the model's judge_settings.json, else JudgeConfig's default
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=f"JudgeConfig.{name}")
    serve_flags = [f.name for f in dataclasses.fields(ServeConfig)]
    for name in serve_flags:
        p.add_argument("--" + name.replace("_", "-"), type=float if name == "max_wait_ms" else int, default=None,
                       help=f"ServeConfig.{name}")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    given = {k: getattr(args, k) for k in judge_flags if getattr(args, k) is not None}
    try:
        serve_config = ServeConfig(**{k: getattr(args, k) for k in serve_flags if getattr(args, k) is not None})
        api.JudgeConfig(**given)  # a bad flag fails before the model loads
    except (ValueError, api.JudgeConfigError) as e:
        p.error(str(e))
    runtime.apply()
    service = build(args.model, given, serve_config)
    log.info("serving %s (%s) on http://%s:%d", args.model, service.judge.config, args.host, args.port)
    uvicorn.run(service.app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
