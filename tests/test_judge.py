import re
import types

import jax
import numpy as np
import pytest
from chartok import CharTokenizer
from conftest import tiny_config

from genrm_jax.judge import api, prompts
from genrm_jax.models import heads, llama

CONV = [{"role": "user", "content": "Say something nice."}]


def _shown(tok, ids):
    """(answer shown as A, answer shown as B) in a rendered judge prompt."""
    text = tok.decode(ids)
    a = re.search(r"Assistant A's Answer\](.*?)\[The End of Assistant A", text, re.S).group(1).strip()
    b = re.search(r"Assistant B's Answer\](.*?)\[The End of Assistant B", text, re.S).group(1).strip()
    return a, b


class FakeEngine:
    """Prefers the answer containing "good"; writes `bad_text` instead of a verdict for answers with "mute"."""

    def __init__(self, tok, p_good=0.9):
        self.tok, self.p_good, self.calls = tok, p_good, []

    def generate(self, prompts_, sp, progress=False):
        self.calls.append((len(prompts_), sp))
        out = []
        for ids in prompts_:
            a, b = _shown(self.tok, ids)
            if "mute" in a + b:
                text = "I would rather not say."
            else:
                text = f"A says {a!r}, B says {b!r}. " + ("[[A]]" if "good" in a else "[[B]]")
            out.append([types.SimpleNamespace(text=text) for _ in range(sp.n)])
        return out

    def score_next_token(self, prompts_, candidates):
        rows = []
        for ids in prompts_:
            a, _ = _shown(self.tok, ids)
            p = self.p_good if "good" in a else 1 - self.p_good
            rows.append([np.log(p), np.log(1 - p)])
        return np.array(rows)


@pytest.fixture
def model():
    cfg = tiny_config(max_position_embeddings=2048)  # room for the judge prompts (~1000 characters)
    return types.SimpleNamespace(config=cfg, params=llama.init(jax.random.PRNGKey(0), cfg), tokenizer=CharTokenizer(),
                                 path="tiny")


def test_prompts_render_chat_context():
    multi = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "2+2?"}]
    body = prompts.judge(multi, "4", "5")[1]["content"]
    assert body.startswith("[Chat Context]\nUser: hi\n\nAssistant: hello\n\n[User Question]\n2+2?")
    assert "[The Start of Assistant A's Answer]\n4\n" in body and "[[A]]" in prompts.JUDGE_SYSTEM
    assert "[Chat Context]" not in prompts.judge(CONV, "x", "y")[1]["content"]
    assert "Explain why response B is better than response A" in prompts.rationalizer(CONV, "x", "y", "B")[1][
        "content"]
    assert "[RESULT] (1 or 2)" in prompts.pairwise(CONV, "x", "y")[0]["content"]
    assert "[RESULT] (an integer between 1 and 5)" in prompts.pointwise(CONV, "x")[0]["content"]
    assert "###Evaluation to rate:\nscore 3" in prompts.meta_judge(CONV, "x", "score 3")[0]["content"]
    with pytest.raises(ValueError, match="ending with the user's turn"):
        prompts.judge(multi[:2], "a", "b")
    with pytest.raises(ValueError, match="winner"):
        prompts.rationalizer(CONV, "a", "b", "C")


def test_cot_votes_and_both_orders(model):
    eng = FakeEngine(model.tokenizer)
    judge = api.Judge(model, api.JudgeConfig(method="cot", k=3, position="both"), engine=eng)
    j = judge.compare([CONV] * 3, ["good", "bad", "mute"], ["bad", "good", "bad"])
    assert j.p_a.tolist() == [1.0, 0.0, 0.5]  # the mute pair is invalid: a tie
    assert j.votes.shape == (3, 2, 3) and j.swapped.tolist() == [[False, True]] * 3
    assert (j.votes[0] == api.VOTE_A).all() and (j.votes[1] == api.VOTE_B).all()
    assert (j.votes[2] == api.INVALID).all()
    assert len(j.rationales[0]) == 6 and "[[" in j.rationales[0][0]
    assert eng.calls[0][0] == 6 and eng.calls[0][1].n == 3  # 3 pairs x 2 orders in one batch


def test_invalid_score_is_configurable(model):
    judge = api.Judge(model, api.JudgeConfig(k=2, invalid_score=0.0), engine=FakeEngine(model.tokenizer))
    assert judge.compare([CONV], ["mute"], ["x"]).p_a.tolist() == [0.0]


def test_seeded_swap_maps_back(model):
    cfg = api.JudgeConfig(k=1, position="swap", seed=5)
    j = api.Judge(model, cfg, engine=FakeEngine(model.tokenizer)).compare([CONV] * 16, ["good"] * 16, ["bad"] * 16)
    assert 0 < j.swapped.sum() < 16  # both presentations used ...
    assert (j.p_a == 1.0).all()  # ... and every vote reported in the caller's labels
    j2 = api.Judge(model, cfg, engine=FakeEngine(model.tokenizer)).compare([CONV] * 16, ["good"] * 16, ["bad"] * 16)
    assert (j2.swapped == j.swapped).all()


def test_genrm_probabilities(model):
    eng = FakeEngine(model.tokenizer, p_good=0.8)
    judge = api.Judge(model, api.JudgeConfig(method="genrm", position="both"), engine=eng)
    j = judge.compare([CONV] * 2, ["good", "bad"], ["bad", "good"])
    np.testing.assert_allclose(j.p_a, [0.8, 0.2], atol=1e-12)
    assert j.votes[:, :, 0].tolist() == [[1, 1], [0, 0]]
    assert judge.verdict_tokens == model.tokenizer.encode("A") + model.tokenizer.encode("B")


def test_reward_is_log_odds(model):
    judge = api.Judge(model, api.JudgeConfig(method="genrm"), engine=FakeEngine(model.tokenizer, p_good=0.8))
    r = judge.reward([CONV] * 2, ["good", "bad"], ["bad", "good"])
    np.testing.assert_allclose(r, [np.log(4), -np.log(4)], atol=1e-9)
    cot = api.Judge(model, api.JudgeConfig(k=2, reward_eps=0.01), engine=FakeEngine(model.tokenizer))
    np.testing.assert_allclose(cot.reward([CONV], ["good"], ["bad"]), [np.log(99)], atol=1e-9)


def test_bt_head_matches_direct_scores(model):
    from genrm_jax.data import pipeline

    head = heads.init(jax.random.PRNGKey(1), model.config)
    head = {"w": head["w"] * 50, "b": head["b"]}  # make rewards differ visibly
    judge = api.Judge(model, api.JudgeConfig(method="bt", batch_size=4, max_len=200), head=head)
    a, b = ["short", "a much longer answer here"], ["other", "x"]
    j = judge.compare([CONV] * 2, a, b)
    for i in range(2):
        ex = pipeline.encode_record({"prompt": CONV, "chosen": a[i], "rejected": b[i]}, "bt", model.tokenizer, 200)
        r = [float(heads.scalar_reward(model.params, head, t[None], np.ones((1, len(t)), np.int32), model.config)[0])
             for t in ex["tokens"]]
        assert j.p_a[i] == pytest.approx(1 / (1 + np.exp(r[1] - r[0])), abs=1e-5)
    flipped = judge.compare([CONV] * 2, b, a)
    np.testing.assert_allclose(j.p_a + flipped.p_a, 1.0, atol=1e-5)


def test_pairrm_both_orders_is_antisymmetric(model):
    head = heads.init(jax.random.PRNGKey(2), model.config)
    head = {"w": head["w"] * 50, "b": head["b"] + 0.3}  # a bias: position bias the two orders must cancel
    judge = api.Judge(model, api.JudgeConfig(method="pairrm", position="both", max_len=200), head=head)
    j = judge.compare([CONV] * 2, ["yes", "no!"], ["no", "fine"])
    k = judge.compare([CONV] * 2, ["no", "fine"], ["yes", "no!"])
    np.testing.assert_allclose(j.p_a + k.p_a, 1.0, atol=1e-5)
    assert j.votes.shape == (2, 2, 1)


def test_bad_config_and_inputs(model):
    with pytest.raises(ValueError, match="method"):
        api.JudgeConfig(method="vibes")
    with pytest.raises(ValueError, match="position"):
        api.JudgeConfig(position="left")
    with pytest.raises(ValueError, match="needs the scalar reward head"):
        api.Judge(model, api.JudgeConfig(method="bt"))
    judge = api.Judge(model, api.JudgeConfig(), engine=FakeEngine(model.tokenizer))
    with pytest.raises(ValueError, match="2 conversations, 1 answers A"):
        judge.compare([CONV] * 2, ["a"], ["b", "c"])


class _Tok(CharTokenizer):
    def decode(self, ids, skip_special_tokens=False):  # the Engine passes the transformers keyword
        return super().decode(ids)


@pytest.fixture
def long_model():
    """The tiny random model with a context long enough for the judge prompts (~1000 characters)."""
    cfg = tiny_config(max_position_embeddings=2048)
    return types.SimpleNamespace(config=cfg, params=llama.init(jax.random.PRNGKey(0), cfg), tokenizer=_Tok(),
                                 path="tiny")


def test_real_engine_genrm_matches_forward(long_model):
    from genrm_jax.sampling import Engine

    m = long_model
    judge = api.Judge(m, api.JudgeConfig(method="genrm"), engine=Engine(m, max_batch=4))
    j = judge.compare([CONV, CONV], ["yes", "a longer answer"], ["no", "b"])
    for i, (a, b) in enumerate([("yes", "no"), ("a longer answer", "b")]):
        ids = prompts.render(m.tokenizer, prompts.genrm(CONV, a, b))
        logits = llama.forward(m.params, np.asarray([ids], np.int32), m.config).logits[0, -1]
        la, lb = np.asarray(logits)[judge.verdict_tokens]
        assert j.p_a[i] == pytest.approx(1 / (1 + np.exp(lb - la)), abs=1e-4)


def test_real_engine_cot_shapes(long_model):
    from genrm_jax.sampling import Engine

    judge = api.Judge(long_model, api.JudgeConfig(k=2, temperature=1.0, max_new_tokens=6, position="both"),
                      engine=Engine(long_model, max_batch=8))
    j = judge.compare([CONV] * 2, ["yes", "ok"], ["no", "nah"])
    assert j.votes.shape == (2, 2, 2) and len(j.rationales[1]) == 4
    assert all(isinstance(t, str) for t in j.rationales[0])
    assert ((0 <= j.p_a) & (j.p_a <= 1)).all()


@pytest.mark.slow
def test_embedded_model_judges(smollm):
    from genrm_jax.data import sources
    from genrm_jax.sampling import Engine

    recs = sources.load("rewardbench", sources.REWARDBENCH, limit=2)
    engine = Engine(smollm, max_batch=4)
    conv = [r["prompt"] for r in recs]
    genrm = api.Judge(smollm, api.JudgeConfig(method="genrm", max_answer_tokens=32), engine=engine)
    j = genrm.compare(conv, [r["chosen"] for r in recs], [r["rejected"] for r in recs])
    assert ((0 < j.p_a) & (j.p_a < 1)).all()
    cot = api.Judge(smollm, api.JudgeConfig(temperature=0.0, max_new_tokens=8, max_answer_tokens=32), engine=engine)
    j = cot.compare(conv[:1], [recs[0]["chosen"]], [recs[0]["rejected"]])
    assert j.rationales[0][0] and j.votes.shape == (1, 1, 1)


def test_experiment_config_and_eval_sets(tmp_path):
    import json

    from experiments.configs import llm_judge as cfg_mod
    from genrm_jax.judge import benchmark

    c = cfg_mod.get_config()
    assert c.methods.split(",")[0] == "cot" and c.eval.limit is None
    data = benchmark.eval_sets(c.eval, c.seed)
    assert list(data) == ["rewardbench"] and len({r["subset"] for r in data["rewardbench"]}) == 23
    full = cfg_mod.get_config("full")
    assert len(benchmark.eval_sets(full.eval, full.seed)["rewardbench"]) == 2985
    hh_cfg = cfg_mod.get_config("hh")
    hh = benchmark.eval_sets(hh_cfg.eval, hh_cfg.seed)["hh-rlhf"]
    assert {r["subset"] for r in hh} == {"harmless-base", "helpful-base", "helpful-online",
                                         "helpful-rejection-sampled"}
    p = tmp_path / "mine.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(9)))
    c.eval.path, c.eval.limit = str(p), 4
    mine = benchmark.eval_sets(c.eval)
    assert list(mine) == ["mine"] and len(mine["mine"]) == 4
    # a plain dict works too (other experiments need not build a ConfigDict)
    assert len(benchmark.eval_sets({"path": str(p), "format": "jsonl"})["mine"]) == 9
    with pytest.raises(ValueError, match="unknown preset"):
        cfg_mod.get_config("nope")


# ------------------------------------------------------------------ forced verdicts from the rows' KV cache


class _RoundTrip(CharTokenizer):
    """CharTokenizer whose every id decodes to a character of its own (ids the base class leaves blank become
    U+0100 + id), so a rationale's text encodes back to the very tokens sampled: forced verdicts reuse most of
    the row's cache, not only its first few tokens."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) - 0x100 if ord(c) >= 0x100 else super(_RoundTrip, self).encode(c)[0] for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(super(_RoundTrip, self).decode([i]) or chr(0x100 + i) for i in ids)


def _second_prefill(outs):
    """The completions without their cache-scored continuation: `forced` then prefills prompt + rationale again."""
    import dataclasses

    return [[dataclasses.replace(c, continuation=None) for c in cs] for cs in outs]


@pytest.mark.parametrize("kernels", ["cpu", "xla"])
def test_forced_verdicts_from_the_cache_equal_a_second_prefill(kernels):
    """P(label) read after the rationale from each row's KV cache equals the two-prefill path within 1e-4, for the
    pairwise [[A]]/[[B]] and the pointwise 1-5 verdicts, with rows that end (EOS) at different steps, prompts of
    different lengths left-padded in one batch, and more samples than fit in one batch."""
    from genrm_jax.sampling import Engine, SamplingParams

    # ten tokens of the vocabulary end a row: rows stop at many different steps, some run to the length limit
    cfg = tiny_config(max_position_embeddings=512, eos_token_ids=tuple(range(60, 70)), kernels=kernels)
    m = types.SimpleNamespace(config=cfg, params=llama.init(jax.random.PRNGKey(0), cfg), tokenizer=_RoundTrip(),
                              path="tiny")
    engine, tok = Engine(m, max_batch=8), m.tokenizer
    ids = [tok.apply_chat_template([{"role": "user", "content": "x" * n}]) for n in (3, 17, 40)]
    for style, n in (("brackets", 3), ("result", 5)):  # n = 5: a prompt's samples span two batches of 8 rows
        labels = api.verdict_label_tokens(tok, style)
        sp = SamplingParams(temperature=1.0, max_new_tokens=16, n=n, seed=1, stop_strings=("[[",))
        engine.stats.clear()
        outs = engine.generate(ids, sp, then=api.forced_continuation(tok, style, labels))
        new = api.forced(engine, tok, ids, outs, style, labels, 1.0, 0)
        assert engine.stats["score_tokens"] == 0  # no second prefill
        assert engine.stats["continuation_reused"] > engine.stats["continuation_tokens"] / 2
        lengths = [len(c.token_ids) for cs in outs for c in cs]
        assert len(set(lengths)) > 3 and {c.finish_reason for cs in outs for c in cs} >= {"eos", "length"}
        old = api.forced(engine, tok, ids, _second_prefill(outs), style, labels, 1.0, 0)
        assert engine.stats["score_tokens"] > 0
        assert len(new) == len(old) == len(ids) * n
        for a, b in zip(new, old):
            assert a[:3] == b[:3] and a[4] == b[4]  # same prompt, sample, rationale and drawn label
            np.testing.assert_allclose(a[3], b[3], atol=1e-4, rtol=0)


def test_judges_force_verdicts_without_a_second_prefill(long_model):
    """Judge (cot, force) and PointwiseJudge score from the cache: the same P(A) and distributions as an engine
    that prefills prompt + rationale again, and no scoring prefill."""
    from genrm_jax.judge import pointwise
    from genrm_jax.sampling import Engine

    engine = Engine(long_model, max_batch=8)
    judge = api.Judge(long_model, api.JudgeConfig(k=2, temperature=1.0, max_new_tokens=8, position="both",
                                                  verdict="force"), engine=engine)
    pw = pointwise.PointwiseJudge(long_model, pointwise.PointwiseConfig(n=2, temperature=1.0, max_new_tokens=8),
                                  engine=engine)
    items = [{"conversation": CONV, "response": r, "rubric": "Is it kind?"} for r in ("yes", "a longer answer")]
    j = judge.compare([CONV, CONV], ["yes", "a longer answer"], ["no", "b"])
    scored = pw.score(items)
    assert engine.stats["score_tokens"] == 0 and engine.stats["continuation_tokens"] > 0
    engine.generate = lambda *a, then=None, **k: Engine.generate(engine, *a, **k)  # the old path: no `then`
    j_old = judge.compare([CONV, CONV], ["yes", "a longer answer"], ["no", "b"])
    scored_old = pw.score(items)
    assert engine.stats["score_tokens"] > 0
    np.testing.assert_allclose(j.sample_p_a, j_old.sample_p_a, atol=1e-4, rtol=0)
    np.testing.assert_allclose(j.p_a, j_old.p_a, atol=1e-4, rtol=0)
    assert j.rationales == j_old.rationales
    for a, b in zip(scored, scored_old):
        for x, y in zip(a["judgments"], b["judgments"]):
            assert x["text"] == y["text"] and x["score"] == y["score"]
            np.testing.assert_allclose(x["dist"], y["dist"], atol=1e-4, rtol=0)


def test_verify_prompt_and_its_hinted_form(model):
    """`verify` (the learn preset's short prompt) shows question and both answers; its hinted form names the
    winner; the judge builds the hinted form for hints, and a prompt with no hinted form is refused."""
    body = prompts.verify(CONV, "41", "31")[1]["content"]
    assert body.endswith("[Answer A]\n41\n\n[Answer B]\n31") and CONV[-1]["content"] in body
    assert "[[A]]" in prompts.VERIFY_SYSTEM and "[[B]]" in prompts.VERIFY_SYSTEM
    hinted = prompts.verify_hinted(CONV, "41", "31", "B")
    assert hinted[1]["content"].startswith(body) and 'end with "[[B]]"' in hinted[1]["content"]
    assert hinted[0] == prompts.verify(CONV, "41", "31")[0]
    with pytest.raises(ValueError, match="winner"):
        prompts.verify_hinted(CONV, "a", "b", "C")
    judge = api.Judge(model, api.JudgeConfig(prompt="verify", verdict="force"), engine=object())
    assert judge.builder(hint="A")(CONV, "x", "y") == prompts.verify_hinted(CONV, "x", "y", "A")
    assert judge.builder()(CONV, "x", "y") == prompts.verify(CONV, "x", "y")
    assert api.Judge(model, api.JudgeConfig(), engine=object()).builder(hint="B")(CONV, "x", "y") == \
        prompts.rationalizer(CONV, "x", "y", "B")
    with pytest.raises(ValueError, match="no hinted form"):
        api.Judge(model, api.JudgeConfig(prompt="genrm"), engine=object()).builder(hint="A")
