"""The judge server (genrm_jax/serve.py): a real uvicorn server on 127.0.0.1 called over HTTP with urllib.

Every prompt here is sized into one engine length bucket and the engine takes at most 2 rows per batch, so the
whole file compiles the sampler for two batch shapes (the offline judge's calls compile them first)."""
import concurrent.futures
import json
import re
import types
import urllib.error
import urllib.request

import numpy as np
import pytest

from genrm_jax import serve
from genrm_jax.integrations import verl_reward
from genrm_jax.judge import api, pointwise

JUDGE = api.JudgeConfig(method="cot", verdict="force", k=1, temperature=1.0, max_new_tokens=4, position="fixed",
                        seed=3)


def question(i: int) -> str:
    return f"Question {i:02d}: what is {i:02d} + {i:02d}?"


def answer(i: int, wrong: bool) -> str:  # ~60 characters: every judge prompt falls in one length bucket
    return f"The answer is {2 * i + wrong:03d}, since adding {i:02d} to itself {'adds one' if wrong else 'doubles'}."


PAIRS = [(question(i % 16), answer(i, i % 3 == 0), answer(i, i % 3 != 0)) for i in range(64)]


def call(url: str, path: str, body=None, raw: bytes | None = None):
    """(status, parsed JSON or text) of a GET (no body) or POST."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@pytest.fixture(scope="module")
def parts():
    from genrm_jax.io import load_model
    from genrm_jax.sampling import Engine

    model = load_model("tiny-random")
    metrics = serve.Metrics()
    engine = serve.CountingEngine(Engine(model, max_batch=2), metrics)
    judge = api.Judge(model, JUDGE, engine=engine)
    pw = pointwise.PointwiseJudge(model, pointwise.PointwiseConfig(max_new_tokens=4, temperature=1.0, seed=3),
                                  engine=engine)
    return types.SimpleNamespace(model=model, judge=judge, pointwise=pw, metrics=metrics)


@pytest.fixture(scope="module")
def offline(parts):
    """The offline judge's results for PAIRS in one call (and for one pair alone: the second batch shape)."""
    convs = [[{"role": "user", "content": q}] for q, _, _ in PAIRS]
    one = parts.judge.compare(convs[:1], [PAIRS[0][1]], [PAIRS[0][2]])
    return parts.judge.compare(convs, [a for _, a, _ in PAIRS], [b for _, _, b in PAIRS]), one


@pytest.fixture(scope="module")
def server(parts, offline):
    service = serve.Service(parts.judge, parts.pointwise, serve.ServeConfig(max_batch=16, max_wait_ms=50),
                            metrics=parts.metrics, eos_strings=("<|im_end|>",))
    running = serve.Running(service.app())
    yield running
    running.stop()


def test_concurrent_requests_match_the_offline_judge_and_are_batched(server, offline):
    full, one = offline

    def ask(i):
        q, a, b = PAIRS[i]
        return call(server.url, "/v1/compare", {"pairs": [{"prompt": q, "a": a, "b": b}]})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(len(PAIRS))))
    assert [s for s, _ in answers] == [200] * len(PAIRS)
    for i, (_, body) in enumerate(answers):
        (r,) = body["results"]
        assert r["votes"] == [["A" if v == api.VOTE_A else "B" if v == api.VOTE_B else None for v in full.votes[i, 0]]]
        assert r["rationales"] == full.rationales[i]
        assert r["p_a"] == pytest.approx(full.p_a[i], abs=1e-5)
        assert r["verdict"] == serve.verdict(full.p_a[i])
    assert one.rationales[0] == full.rationales[0]  # alone or among 64: the same judgment

    status, text = call(server.url, "/metrics")
    assert status == 200
    largest = int(re.search(r"^genrm_batch_pairs_max (\d+)$", text, re.M).group(1))
    assert largest > 1, text  # concurrent requests were judged together
    assert int(re.search(r'^genrm_tokens_total\{kind="generated"\} (\d+)$', text, re.M).group(1)) > 0
    assert re.search(r'^genrm_requests_total\{route="/v1/compare",status="200"\} (\d+)$', text, re.M)


@pytest.mark.parametrize("raw,status,field", [
    (b"{not json", 400, "body"),
    (b"[1, 2]", 400, "body"),
    (json.dumps({"pairs": [], "extra": 1}).encode(), 400, "extra"),
    (json.dumps({"pairs": []}).encode(), 400, "pairs"),
    (json.dumps({"pairs": [{"prompt": "q", "a": "x"}]}).encode(), 400, "pairs[0].b"),
    (json.dumps({"pairs": [{"prompt": "q", "a": "x", "b": 3}]}).encode(), 400, "pairs[0].b"),
    (json.dumps({"pairs": [{"prompt": "q", "a": "x", "b": "y", "c": "z"}]}).encode(), 400, "pairs[0].c"),
    (json.dumps({"pairs": [{"prompt": [{"role": "bot", "content": "q"}], "a": "x", "b": "y"}]}).encode(), 400,
     "pairs[0].prompt[0].role"),
    (json.dumps({"pairs": [{"prompt": "q", "a": "x " * 3000, "b": "y"}]}).encode(), 413, "pairs[0]"),
    (json.dumps({"pairs": [{"prompt": "q", "a": "x", "b": "y"}] * 300}).encode(), 413, "pairs"),
])
def test_bad_requests_are_refused_naming_the_field(server, raw, status, field):
    got, body = call(server.url, "/v1/compare", raw=raw)
    assert (got, body["error"]["field"]) == (status, field), body
    assert call(server.url, "/health")[0] == 200  # and the server still answers


def test_reward_against_a_reference_and_within_a_group(server, offline):
    full, _ = offline
    q, a, b = PAIRS[5]
    status, body = call(server.url, "/v1/reward", {"items": [{"prompt": q, "response": a, "reference": b}]})
    assert status == 200
    assert body["p_better"][0] == pytest.approx(full.p_a[5], abs=1e-5)
    assert body["rewards"][0] == pytest.approx(api.log_odds(full.p_a[5:6], JUDGE.reward_eps)[0], abs=1e-3)

    responses = [PAIRS[5][1], PAIRS[5][2], answer(5, True).replace("adds", "gives")]
    status, body = call(server.url, "/v1/reward", {"groups": [{"prompt": q, "responses": responses}]})
    assert status == 200
    (rewards,) = body["rewards"]
    pairs = {(0, 1), (0, 2), (1, 2)}
    got = call(server.url, "/v1/compare", {"pairs": [{"prompt": q, "a": responses[i], "b": responses[j]}
                                                     for i, j in sorted(pairs)]})[1]["results"]
    lo = {ij: api.log_odds(np.array([r["p_a"]]), JUDGE.reward_eps)[0] for ij, r in zip(sorted(pairs), got)}
    expected = [(lo[(0, 1)] + lo[(0, 2)]) / 2, (-lo[(0, 1)] + lo[(1, 2)]) / 2, (-lo[(0, 2)] - lo[(1, 2)]) / 2]
    assert rewards == pytest.approx(expected, abs=1e-6)
    assert sum(rewards) == pytest.approx(0.0, abs=1e-9)
    assert call(server.url, "/v1/reward", {"groups": [{"prompt": q, "responses": [a]}]})[1]["error"]["field"] == \
        "groups[0].responses"
    assert call(server.url, "/v1/reward", {"items": [], "groups": []})[0] == 400


def test_pointwise_score_has_a_distribution(server):
    q, a, _ = PAIRS[2]
    status, body = call(server.url, "/v1/score", {"items": [{"prompt": q, "response": a}]})
    assert status == 200, body
    (r,) = body["results"]
    assert r["score"] in (1, 2, 3, 4, 5) and sum(r["dist"]) == pytest.approx(1.0, abs=1e-6)
    assert r["expected"] == pytest.approx(float(np.dot(r["dist"], [1, 2, 3, 4, 5])))
    assert call(server.url, "/v1/score", {"items": [{"prompt": q, "response": a, "score": 3}]})[1]["error"]["field"] \
        == "items[0].score"


def test_openrlhf_route_returns_one_reward_per_query(server):
    texts = [f"<|im_start|>user\n{PAIRS[i][0]}<|im_end|>\n<|im_start|>assistant\n" for i in (1, 4)]
    queries = [t + PAIRS[i][1] + "<|im_end|>" for t, i in zip(texts, (1, 4))]
    labels = [PAIRS[i][2] for i in (1, 4)]
    status, body = call(server.url, "/get_reward", {"query": queries, "prompts": texts, "labels": labels})
    assert status == 200, body
    assert len(body["rewards"]) == len(queries) == len(body["scores"])
    same = call(server.url, "/v1/reward", {"items": [{"prompt": PAIRS[i][0], "response": PAIRS[i][1],
                                                      "reference": PAIRS[i][2]} for i in (1, 4)]})[1]
    assert body["rewards"] == pytest.approx(same["rewards"], abs=1e-4)
    assert call(server.url, "/get_reward", {"query": queries, "prompts": texts})[1]["error"]["field"] == "labels"
    assert call(server.url, "/get_reward", {"query": ["abc"], "prompts": ["xyz"], "labels": ["r"]})[1]["error"][
        "field"] == "query[0]"


def test_verl_reward_function_calls_the_server(server, monkeypatch):
    q, a, b = PAIRS[7]
    monkeypatch.setenv(verl_reward.URL_ENV, server.url)
    out = verl_reward.compute_score("gsm8k", a, b, {"question": q})
    same = call(server.url, "/v1/reward", {"items": [{"prompt": q, "response": a, "reference": b}]})[1]
    assert out["score"] == pytest.approx(same["rewards"][0], abs=1e-4)
    with pytest.raises(ValueError, match="question"):
        verl_reward.compute_score("gsm8k", a, b, {})


def test_a_full_queue_answers_503_and_the_server_recovers(parts, server):
    service = serve.Service(parts.judge, None, serve.ServeConfig(max_batch=1, max_wait_ms=0, max_queue=1))
    running = serve.Running(service.app())
    try:
        body = {"pairs": [{"prompt": q, "a": a, "b": b} for q, a, b in PAIRS[:4]]}
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            statuses = [s for s, _ in pool.map(lambda _: call(running.url, "/v1/compare", body), range(12))]
        assert 503 in statuses and 200 in statuses, statuses
        assert set(statuses) <= {200, 503}
        assert call(running.url, "/v1/compare", body)[0] == 200
        assert call(running.url, "/v1/score", {"items": [{"prompt": "q", "response": "r"}]})[0] == 400  # no scorer
    finally:
        running.stop()


def test_chatml_prompt_text_is_read_back_into_turns():
    text = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert serve.prompt_from_text(text) == [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Hi?"}]
    assert serve.prompt_from_text("plain question") == [{"role": "user", "content": "plain question"}]


def test_swapped_presentation_is_refused():
    judge = types.SimpleNamespace(config=api.JudgeConfig(position="swap"))
    with pytest.raises(ValueError, match="swap"):
        serve.Service(judge)


def test_judge_settings_round_trip_and_errors(tmp_path):
    from genrm_jax.judge import settings

    trained = api.JudgeConfig(method="cot", prompt="judge", verdict="force", max_new_tokens=64, max_answer_tokens=32)
    path = settings.write(str(tmp_path), trained)
    assert json.load(open(path)) == {"version": 1, "method": "cot", "prompt": "judge", "verdict": "force",
                                     "max_new_tokens": 64, "max_answer_tokens": 32, "max_prompt_tokens": None}
    used = settings.apply(api.JudgeConfig(k=4, max_new_tokens=8), str(tmp_path), explicit=("k", "max_new_tokens"))
    assert (used.verdict, used.max_answer_tokens, used.k, used.max_new_tokens) == ("force", 32, 4, 8)
    assert settings.overrides(str(tmp_path / "nothing-here")) == {}
    for bad, field in [({"version": 1, "verdict": "guess"}, "verdict"), ({"version": 1, "k": 3}, "k"),
                       ({"method": "cot"}, "version")]:
        (tmp_path / settings.FILENAME).write_text(json.dumps(bad))
        with pytest.raises(settings.SettingsError, match=f"{re.escape(path)}: .*'{field}'"):
            settings.read(str(tmp_path))


def test_build_serves_an_export_with_its_settings(tmp_path):
    import shutil

    from genrm_jax.io import registry
    from genrm_jax.judge import settings

    export = str(tmp_path / "export")
    shutil.copytree(registry.resolve("tiny-random"), export)
    settings.write(export, api.JudgeConfig(method="cot", verdict="force", max_new_tokens=6, max_answer_tokens=20))
    service = serve.build(export, {"k": 2, "max_new_tokens": 5}, serve.ServeConfig())
    cfg = service.judge.config
    assert (cfg.verdict, cfg.max_answer_tokens, cfg.k, cfg.max_new_tokens) == ("force", 20, 2, 5)
    assert service.pointwise is not None
