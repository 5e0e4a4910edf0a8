"""A verl custom reward function that asks a `python -m genrm_jax.serve` judge for the reward.

verl calls `compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)` for each rollout
(verl/experimental/reward_loop/reward_manager/naive.py; docs/advance/reward_loop.rst) and takes a float or a dict
with "score". Point its config at this file:

    custom_reward_function.path=genrm_jax/integrations/verl_reward.py custom_reward_function.name=compute_score

and the server with GENRM_JAX_URL (default http://127.0.0.1:8000). The reward is the judge's Eq. 6 log-odds of
the rollout beating the reference answer `ground_truth` (POST /v1/reward); the question comes from
`extra_info["question"]` (as verl's examples/data_preprocess/gsm8k.py writes it) or `extra_info["prompt"]` (a
string or a chat list). Only the standard library is used, so the file runs inside verl's workers as it is.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

URL_ENV = "GENRM_JAX_URL"
DEFAULT_URL = "http://127.0.0.1:8000"


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # the server names the field it refused
        raise RuntimeError(f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None


def compute_score(data_source, solution_str, ground_truth, extra_info=None, *, url: str | None = None,
                  timeout: float = 600.0, **kwargs) -> dict:
    """{"score": log-odds of `solution_str` beating `ground_truth`, "p_better": that probability}."""
    extra_info = extra_info or {}
    prompt = extra_info.get("question") or extra_info.get("prompt")
    if not prompt:
        raise ValueError("verl_reward.compute_score: extra_info needs 'question' (or 'prompt'): the judge compares "
                         "answers to a question")
    base = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    out = _post(base + "/v1/reward", {"items": [{"prompt": prompt, "response": solution_str,
                                                 "reference": str(ground_truth)}]}, timeout)
    return {"score": float(out["rewards"][0]), "p_better": float(out["p_better"][0])}
