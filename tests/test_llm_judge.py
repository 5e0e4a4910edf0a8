"""The benchmark runner (genrm_jax.judge.benchmark) and the llm_judge entry point: config validation before the
model loads, one-line flag errors, prompts fitted to the model's context, values checked against independent
computation, and an end-to-end run on a tiny real Hugging Face model directory."""
import json
import os
import re
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from chartok import CharTokenizer
from conftest import tiny_config
from tinyhf import make_model_dir

from genrm_jax.data import splits
from genrm_jax.judge import api, benchmark, prompts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONV = [{"role": "user", "content": "Which is better?"}]


def _config():
    from experiments.configs import llm_judge as cfg_mod

    return cfg_mod.get_config()


def _run(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "experiments.llm_judge", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _strict_json(text):
    def bad(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=bad)


def _records(rows):
    """Records in the sources format from (id, subset, chosen, rejected[, conversation])."""
    out = []
    for row in rows:
        rid, subset, chosen, rejected = row[:4]
        conv = row[4] if len(row) > 4 else CONV
        out.append({"id": rid, "prompt": conv, "chosen": chosen, "rejected": rejected, "subset": subset,
                    "category": subset, "source": f"test:{rid}"})
    return out


# ------------------------------------------------------------------------------------------- config


def test_unknown_method_fails_fast_naming_the_field():
    c = _config()
    c.methods = "cot,xyz"
    t = time.time()
    with pytest.raises(benchmark.ConfigError,
                       match=re.escape("config.methods: unknown method 'xyz'; expected one of cot, genrm")):
        benchmark.judge_configs(c)
    assert time.time() - t < 1.0
    c.methods = " , "
    with pytest.raises(benchmark.ConfigError, match="config.methods: no method given"):
        benchmark.judge_configs(c)


@pytest.mark.parametrize("method", ["bt", "pairrm"])
def test_head_methods_are_rejected_without_a_head(method):
    c = _config()
    c.methods = f"genrm,{method}"
    with pytest.raises(benchmark.ConfigError, match=f"config.methods: method '{method}'.*untrained reward head"):
        benchmark.judge_configs(c)
    assert benchmark.judge_configs(c, with_head=True)[method].method == method  # a caller with a trained head


def test_judge_configs_merge_and_name_bad_fields():
    c = _config()
    c.seed = 7
    c.judge.stop_strings = ("]]",)
    jcs = benchmark.judge_configs(c)
    assert list(jcs) == ["cot", "genrm"]
    assert jcs["cot"].position == "fixed" and jcs["genrm"].position == "both"  # per_method override
    assert jcs["cot"].seed == jcs["genrm"].seed == 7 and jcs["cot"].stop_strings == ("]]",)
    assert jcs["cot"].max_new_tokens == c.judge.max_new_tokens and jcs["cot"].prompt == "judge"
    plain = benchmark.judge_configs({"methods": "genrm", "judge": {"stop_strings": "]]", "k": 3}})  # a plain dict
    assert plain["genrm"].stop_strings == ("]]",) and plain["genrm"].k == 3 and plain["genrm"].seed == 0

    for mutate, message in [
        (lambda c: setattr(c.judge, "position", "left"), "config.judge.position: must be one of"),
        (lambda c: setattr(c.per_method.genrm, "position", "up"), "config.per_method.genrm.position: must be"),
        (lambda c: setattr(c.judge, "k", 0), "config.judge.k: must be an integer >= 1"),
        (lambda c: setattr(c.judge, "prompt", "vibes"), "config.judge.prompt: must be one of"),
        (lambda c: setattr(c.judge, "top_p", 0.0), r"config.judge.top_p: must be in \(0, 1\]"),
        (lambda c: setattr(c.judge, "max_answer_tokens", 0), "config.judge.max_answer_tokens"),
        (lambda c: setattr(c.judge, "colour", "red"), "config.judge.colour: not a JudgeConfig field"),
        (lambda c: c.per_method.update({"xyz": {"k": 2}}), "config.per_method.xyz: not a method"),
    ]:
        c = _config()
        mutate(c)
        with pytest.raises(benchmark.ConfigError, match=message):
            benchmark.judge_configs(c)


def test_eval_set_errors_name_the_field(tmp_path):
    c = _config()
    for field, value, message in [("dataset", "imagenet", "config.eval.dataset: must be one of"),
                                  ("limit", 0, "config.eval.limit"),
                                  ("path", str(tmp_path / "nope.jsonl"), "config.eval.path: no such file")]:
        e = _config().eval
        e[field] = value
        with pytest.raises(benchmark.ConfigError, match=message):
            benchmark.eval_sets(e, c.seed)
    with pytest.raises(benchmark.ConfigError, match="config.eval.ks"):
        benchmark.check_ks((1, 0))


def test_unknown_config_key_is_one_line_and_status_2(tmp_path):
    r = _run("--workdir", str(tmp_path), "--config.foo=1")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: --config.foo: no such config field; known top-level fields: ")
    assert "methods" in r.stderr and "eval" in r.stderr

    r = _run("--workdir", str(tmp_path), "--config=experiments/configs/llm_judge.py:genrm", "--config.eval.nope=2")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == ("error: --config.eval.nope: no such config field; known fields of config.eval: "
                                "bias, bias_attack_pairs, bias_pairs, dataset, format, ks, limit, path, per_subset")


def test_bad_method_fails_before_the_model_loads(tmp_path):
    # the model does not exist: reaching the loader would fail differently (and later)
    r = _run("--workdir", str(tmp_path), "--config.model=/no/such/model", "--config.methods=cot,bt")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: config.methods: method 'bt'") and "untrained reward head" in r.stderr
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------------- values, by hand


class AlwaysA:
    """A cot engine whose every judgment says the answer shown first is better."""

    def __init__(self):
        self.prompts = []

    def generate(self, ids, sp, progress=False):
        self.prompts += ids
        return [[types.SimpleNamespace(text="Clearly [[A]]") for _ in range(sp.n)] for _ in ids]


class PrefersGood:
    """Says the shown answer containing "good" is better; no verdict when either says "mute"."""

    def __init__(self, tok):
        self.tok = tok

    def generate(self, ids, sp, progress=False):
        out = []
        for x in ids:
            text = self.tok.decode(x)
            a = re.search(r"Assistant A's Answer\](.*?)\[The End of Assistant A", text, re.S).group(1)
            b = re.search(r"Assistant B's Answer\](.*?)\[The End of Assistant B", text, re.S).group(1)
            verdict = "no idea" if "mute" in a + b else "[[A]]" if "good" in a else "[[B]]"
            out.append([types.SimpleNamespace(text=verdict) for _ in range(sp.n)])
        return out


@pytest.fixture
def char_model():
    import jax

    from genrm_jax.models import llama

    cfg = tiny_config(max_position_embeddings=2048)
    return types.SimpleNamespace(config=cfg, params=llama.init(jax.random.PRNGKey(0), cfg), tokenizer=CharTokenizer(),
                                 path="tiny")


def test_position_biased_judge_scores_half_under_both_orders(char_model):
    recs = _records([(str(i), "s", f"chosen {i}", f"rejected {i}") for i in range(6)])
    judge = api.Judge(char_model, api.JudgeConfig(method="cot", k=2, position="both"), engine=AlwaysA())
    j = judge.compare([r["prompt"] for r in recs], ["x"] * 6, ["y"] * 6)
    np.testing.assert_array_equal(j.p_a, 0.5)
    assert (j.votes[:, 0] == api.VOTE_A).all() and (j.votes[:, 1] == api.VOTE_B).all()  # mapped back per order

    rep = benchmark.evaluate(judge, recs, seed=3, ks=(1, 2))
    assert rep["first_position_rate"] == 1.0 and rep["accuracy"] == 0.5 and rep["invalid_rate"] == 0.0
    assert rep["position_consistency"] == 0.0 and rep["n_skipped"] == 0 and rep["skipped"] == []

    # Shown in one fixed order, the same judge is right exactly when the chosen answer was shown first.
    fixed = api.Judge(char_model, api.JudgeConfig(method="cot"), engine=AlwaysA())
    rep = benchmark.evaluate(fixed, recs, seed=3)
    assert rep["accuracy"] == pytest.approx(splits.a_is_chosen(recs, seed=3).mean())
    assert rep["first_position_rate"] == 1.0


def test_seeded_swap_votes_map_back_by_hand(char_model):
    tok = char_model.tokenizer
    a = ["good one", "meh", "good too", "mute", "bad", "good"]
    b = ["meh", "good two", "bad", "good", "good!", "worse"]
    judge = api.Judge(char_model, api.JudgeConfig(method="cot", position="swap", seed=11), engine=PrefersGood(tok))
    j = judge.compare([CONV] * 6, a, b)
    assert 0 < j.swapped.sum() < 6
    for i in range(6):
        shown_a = b[i] if j.swapped[i, 0] else a[i]
        if "mute" in a[i] + b[i]:
            expected = api.INVALID
        else:  # the stub votes for the shown A when it holds "good"; that is the caller's A unless swapped
            expected = api.VOTE_A if ("good" in shown_a) != bool(j.swapped[i, 0]) else api.VOTE_B
        assert j.votes[i, 0, 0] == expected, i
    np.testing.assert_array_equal(j.p_a, [1.0, 0.0, 1.0, 0.5, 0.0, 1.0])


def test_report_accuracy_matches_hand_count(char_model, tmp_path):
    rows = ([(f"c{i}", "easy", f"good {i}", f"bad {i}") for i in range(5)]      # judged right
            + [(f"w{i}", "hard", f"bad {i}", f"good {i}") for i in range(3)]    # judged wrong
            + [(f"m{i}", "hard", f"mute {i}", f"bad {i}") for i in range(2)])   # no verdict: invalid_score
    recs = _records(rows)
    judge = api.Judge(char_model, api.JudgeConfig(method="cot"),
                      engine=PrefersGood(char_model.tokenizer))
    path = tmp_path / "j.jsonl"
    rep = benchmark.evaluate(judge, recs, seed=0, judgments_path=str(path))
    assert rep["n"] == 10
    assert rep["accuracy"] == pytest.approx((5 + 0.5 * 2) / 10)
    assert rep["subsets"]["easy"] == {"accuracy": 1.0, "n": 5}
    assert rep["subsets"]["hard"]["accuracy"] == pytest.approx(0.5 * 2 / 5)
    assert rep["invalid_rate"] == pytest.approx(0.2)
    lines = [_strict_json(x) for x in path.read_text().splitlines()]
    assert [x["id"] for x in lines] == [r["id"] for r in recs]
    assert [x["p_chosen"] for x in lines] == [1.0] * 5 + [0.0] * 3 + [0.5] * 2
    assert all(x["skipped"] is None and x["truncated"] is False for x in lines)
    assert "accuracy 0.600 (n=10" in benchmark.category_table("t/cot", rep)


# ----------------------------------------------------------------------------- tiny real model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_model_dir(str(tmp_path_factory.mktemp("tiny") / "m"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from genrm_jax.io import load_model

    return load_model(tiny_dir)


def test_genrm_both_orders_matches_forward(tiny):
    from genrm_jax.models import llama
    from genrm_jax.sampling import Engine

    a, b = ["Paris.", "It is 4, since 2 + 2 = 4."], ["Lyon, I think", "5"]
    judge = api.Judge(tiny, api.JudgeConfig(method="genrm", position="both"), engine=Engine(tiny, max_batch=4))
    j = judge.compare([CONV, CONV], a, b)
    ta, tb = (tiny.tokenizer.encode(x, add_special_tokens=False) for x in ("A", "B"))
    for i in range(2):
        p_caller_a = []
        for first, second, caller_a_shown_first in [(a[i], b[i], True), (b[i], a[i], False)]:
            ids = prompts.render(tiny.tokenizer, prompts.genrm(CONV, first, second))
            logits = np.asarray(llama.forward(tiny.params, np.asarray([ids], np.int32), tiny.config).logits[0, -1],
                                np.float64)
            la, lb = logits[ta[0]], logits[tb[0]]
            p_shown_a = np.exp(la) / (np.exp(la) + np.exp(lb))  # softmax over the two verdict tokens
            p_caller_a.append(p_shown_a if caller_a_shown_first else 1.0 - p_shown_a)
        assert j.p_a[i] == pytest.approx(np.mean(p_caller_a), abs=1e-4)
        assert j.votes[i, :, 0].tolist() == [api.VOTE_A if p >= 0.5 else api.VOTE_B for p in p_caller_a]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_forced_verdicts_read_the_label_probabilities(tiny, temperature):
    """The random tiny model never writes [[A]]; a forced verdict scores prompt + rationale + "\n\n[[" and
    reads P(A) from the two label tokens (checked against llama.forward), and draws the same verdicts alone
    and inside a bigger batch."""
    from genrm_jax.models import llama
    from genrm_jax.sampling import Engine

    a, b = ["Paris.", "It is 4."], ["Lyon", "5"]
    cfg = api.JudgeConfig(method="cot", position="both", k=2, temperature=temperature, max_new_tokens=12,
                          verdict="force", seed=3)
    judge = api.Judge(tiny, cfg, engine=Engine(tiny, max_batch=8))
    j = judge.compare([CONV, CONV], a, b)
    assert (j.votes != api.INVALID).all() and np.isfinite(j.sample_p_a).all()
    la_id, lb_id = (tiny.tokenizer.encode("\n\n[[" + x, add_special_tokens=False)[-1] for x in "AB")
    for i in range(2):
        for o, (first, second) in enumerate([(a[i], b[i]), (b[i], a[i])]):
            prompt = prompts.render(tiny.tokenizer, prompts.judge(CONV, first, second))
            for k in range(2):
                text = j.rationales[i][o * 2 + k]
                assert re.search(r"\n\n\[\[[AB]\]\]$", text), text
                rationale = text[:-len("\n\n[[A]]")]
                ids = prompt + tiny.tokenizer.encode(rationale + "\n\n[[", add_special_tokens=False)
                logits = np.asarray(llama.forward(tiny.params, np.asarray([ids], np.int32), tiny.config).logits[0, -1],
                                    np.float64)
                p_shown_a = 1.0 / (1.0 + np.exp(logits[lb_id] - logits[la_id]))
                p_caller_a = p_shown_a if o == 0 else 1.0 - p_shown_a
                assert j.sample_p_a[i, o, k] == pytest.approx(p_caller_a, abs=1e-4)
                shown = text[-3]
                assert j.votes[i, o, k] == (api.VOTE_A if (shown == "A") == (o == 0) else api.VOTE_B)
                if temperature == 0.0:
                    assert shown == ("A" if p_shown_a >= 0.5 else "B")
        # P(A) of a forced-verdict judge is the expected vote: the mean of its judgments' label probabilities
        assert j.p_a[i] == pytest.approx(np.mean(j.sample_p_a[i]), abs=1e-12)
    alone = judge.compare([CONV], a[1:], b[1:])
    assert alone.rationales[0] == j.rationales[1] and (alone.votes[0] == j.votes[1]).all()


def _long_conversation(n_turns=6, chars=400):
    conv = []
    for t in range(n_turns):
        conv.append({"role": "user" if t % 2 == 0 else "assistant", "content": f"turn {t}: " + "blah " * (chars // 5)})
    return conv + [{"role": "user", "content": "So, which answer is right?"}]


def test_fit_cuts_the_conversation_from_the_left():
    tok = CharTokenizer()
    conv = _long_conversation()
    full = prompts.render(tok, prompts.genrm(conv, "yes", "no"))
    budget = len(full) - 1000
    f = prompts.fit(tok, prompts.genrm, conv, "yes", "no", budget)
    assert f.truncated and len(f.ids) <= budget and len(f.ids) > budget - 40  # cut about as much as needed
    text = tok.decode(f.ids)
    assert "turn 0" not in text and "turn 5" in text and prompts.CUT_MARK in text  # earliest turns went first
    assert "So, which answer is right?" in text and "\nyes\n" in text and "\nno\n" in text  # never the answers
    # The kept context is a tail of the original: turns that remain are whole, except the oldest one.
    body = prompts.genrm(prompts.cut_left(tok, conv, 3 * 85), "yes", "no")[1]["content"]
    assert body.startswith("[Chat Context]\nUser: " + prompts.CUT_MARK)
    # Nothing to cut: unchanged; no room at all: None.
    assert prompts.fit(tok, prompts.genrm, CONV, "y", "n", 10_000) == prompts.Fitted(
        prompts.render(tok, prompts.genrm(CONV, "y", "n")), False)
    assert prompts.fit(tok, prompts.genrm, conv, "y" * 500, "n", 300).ids is None


def test_long_prompts_are_cut_or_skipped_never_abort(tmp_path):
    from genrm_jax.io import load_model
    from genrm_jax.models import llama
    from genrm_jax.sampling import Engine

    m = load_model(make_model_dir(str(tmp_path / "m640"), max_position_embeddings=640))
    recs = _records([("short", "s", "yes", "no"),
                     ("long-conv", "s", "yes", "no", _long_conversation()),
                     ("long-answers", "s", "y" * 300, "n" * 300)])
    judge = api.Judge(m, api.JudgeConfig(method="genrm", position="both"), engine=Engine(m, max_batch=4))
    rep = benchmark.evaluate(judge, recs, seed=0, judgments_path=str(tmp_path / "j.jsonl"))
    assert rep["n"] == 3 and rep["truncated"] == 1 and rep["n_skipped"] == 1
    assert rep["skipped"][0]["id"] == "long-answers" and "too long" in rep["skipped"][0]["reason"]
    assert "context of 640" in rep["skipped"][0]["reason"]
    lines = [_strict_json(x) for x in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert [x["truncated"] for x in lines] == [False, True, False] and lines[2]["skipped"]
    assert lines[2]["p_chosen"] == 0.5 and lines[2]["votes_chosen"] == [[-1], [-1]]

    # The cut pair was judged on the fitted prompt: the same probability as a direct forward pass on it.
    a_first = splits.a_is_chosen(recs, seed=0)[1]
    a, b = ("yes", "no") if a_first else ("no", "yes")
    ps = []
    for first, second, caller_a_first in [(a, b, True), (b, a, False)]:
        f = prompts.fit(m.tokenizer, prompts.genrm, recs[1]["prompt"], first, second, 639)
        assert f.truncated and len(f.ids) <= 639
        logits = np.asarray(llama.forward(m.params, np.asarray([f.ids], np.int32), m.config).logits[0, -1], np.float64)
        ta, tb = (m.tokenizer.encode(x, add_special_tokens=False)[0] for x in ("A", "B"))
        p = 1 / (1 + np.exp(logits[tb] - logits[ta]))
        ps.append(p if caller_a_first else 1 - p)
    p_a = np.mean(ps)
    assert lines[1]["p_chosen"] == pytest.approx(p_a if a_first else 1 - p_a, abs=1e-4)

    # A context too small for any judge prompt: every pair is a counted skip, the run completes.
    small = load_model(make_model_dir(str(tmp_path / "m256"), max_position_embeddings=256))
    cot = api.Judge(small, api.JudgeConfig(method="cot", max_new_tokens=8), engine=Engine(small, max_batch=4))
    rep = benchmark.evaluate(cot, recs, seed=0)
    assert rep["n_skipped"] == 3 and [s["id"] for s in rep["skipped"]] == ["short", "long-conv", "long-answers"]
    assert rep["accuracy"] == 0.5 and rep["invalid_rate"] == 1.0


def test_end_to_end_main(tiny_dir, tmp_path):
    rows = [{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5", "subset": "math"},
            {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome", "subset": "geo"},
            {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "subset": "chat"},
            {"prompt": [{"role": "user", "content": "hi " * 400}, {"role": "assistant", "content": "hello " * 200},
                        {"role": "user", "content": "And now?"}], "chosen": "Now this.", "rejected": "?",
             "subset": "chat", "id": "long"},
            {"prompt": "Spell cat.", "chosen": "c-a-t", "rejected": "k-a-t", "subset": "chat"},
            {"prompt": "Is ice cold?", "chosen": "Yes.", "rejected": "No.", "subset": "geo"}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    work = tmp_path / "run"
    t = time.time()
    r = _run("--workdir", str(work), f"--config.model={tiny_dir}", f"--config.eval.path={data}",
             "--config.methods=cot,genrm", "--config.judge.max_new_tokens=8", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.time() - t < 120
    report = _strict_json((work / "report.json").read_text())
    assert set(report["datasets"]) == {"pairs/cot", "pairs/genrm"}
    for method in ("cot", "genrm"):
        rep = report["datasets"][f"pairs/{method}"]
        assert isinstance(rep["accuracy"], float) and 0.0 <= rep["accuracy"] <= 1.0 and rep["n"] == 6
        assert rep["truncated"] == 1 and rep["n_skipped"] == 0 and rep["skipped"] == []
        lines = (work / f"judgments-pairs-{method}.jsonl").read_text().splitlines()
        assert len(lines) == 6 and all(isinstance(_strict_json(x)["p_chosen"], float) for x in lines)
    assert report["meta"]["judges"]["genrm"]["position"] == "both"
    assert (work / "report.md").exists()
    # the bias section (judge/bias.py): position, length, and the master-key attack on every key
    bias = report["datasets"]["pairs/cot"]["bias"]
    assert bias["n"] == 6 and 0.0 <= bias["master_key"]["rate"] <= 1.0 and len(bias["master_key"]["per_key"]) >= 5
    assert set(bias["position"]) >= {"first_win_rate", "flip_rate"}


def test_main_scores_rewardbench2_by_its_official_rules(tiny_dir, tmp_path):
    rows = [{"id": "1", "prompt": "What is 2 + 2?", "chosen": ["4"], "rejected": ["5", "6", "7"], "subset": "Math"},
            {"id": "2", "prompt": "Say hi.", "chosen": ["Hi!"], "rejected": ["No.", "?", "Bye."], "subset": "Focus"}]
    data = tmp_path / "rb2.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    work = tmp_path / "run"
    r = _run("--workdir", str(work), f"--config.model={tiny_dir}", f"--config.eval.path={data}",
             "--config.eval.format=rewardbench2", "--config.methods=genrm", "--config.eval.bias=false", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    scored = _strict_json((work / "report.json").read_text())["meta"]["benchmark_scores"]["rb2/genrm"]
    assert scored["format"] == "rewardbench2" and scored["n"] == 2
    assert set(scored["scores"]["subsets"]) == {"Math", "Focus"} and 0.0 <= scored["scores"]["overall"] <= 1.0
