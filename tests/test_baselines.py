"""The baselines (genrm_jax/baselines.py): GenRM, CoT-GenRM, Bradley-Terry and PairRM, each end to end on the
`smoke` preset (tiny random model), plus their record builders checked against what the method must train on."""
import functools
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest
from chartok import CharTokenizer

from genrm_jax import baselines
from genrm_jax.data import pipeline, sources, splits
from genrm_jax.judge import verdicts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("genrm", "cot_genrm", "bt_rm", "pairrm")
CONV = [{"role": "user", "content": "Name a prime."}]
PAIR = {"id": "1", "subset": "s", "prompt": CONV, "chosen": "Seven.", "rejected": "Nine."}


def _run(method, workdir, *args, timeout=300):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0, cpu0 = time.perf_counter(), _children_cpu()
    p = subprocess.run([sys.executable, "-m", f"experiments.{method}", "--workdir", str(workdir),
                        f"--config=experiments/configs/{method}.py:smoke", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p, time.perf_counter() - t0, _children_cpu() - cpu0


def _children_cpu():
    """CPU seconds of finished child processes: unlike wall time, hardly changed by other jobs on the machine."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _strict_json(path):
    def bad(constant):
        raise ValueError(f"not strict JSON: {constant}")

    with open(path) as f:
        return json.loads(f.read(), parse_constant=bad)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """{method: (workdir, wall seconds, CPU seconds)} of one smoke run per method, run on first use."""
    done = {}

    def get(method):
        if method not in done:
            workdir = tmp_path_factory.mktemp(method) / "run"
            p, seconds, cpu = _run(method, workdir)
            assert p.returncode == 0, p.stderr[-3000:]
            print(f"{method} smoke run: {seconds:.1f} s ({cpu:.1f} CPU s)")
            done[method] = (workdir, seconds, cpu)
        return done[method]

    return get


# --------------------------------------------------------------------------------------------- records


def test_genrm_records_label_the_order_the_chosen_answer_is_shown_in():
    recs = baselines.genrm_records([PAIR])
    assert [r["target"] for r in recs] == ["A", "B"]
    assert recs[0]["group"] == recs[1]["group"]  # both orders in one batch (pipeline groups)
    for r in recs:
        body = r["messages"][-1]["content"]
        a_block = body.split("[The Start of Assistant A's Answer]\n")[1].split("\n")[0]
        assert a_block == ("Seven." if r["target"] == "A" else "Nine.")
        assert "Name a prime." in body


def test_genrm_loss_is_on_the_verdict_token_only():
    from experiments.configs import genrm as cfg

    tok = CharTokenizer()
    for rec in baselines.genrm_records([PAIR]):
        ex = pipeline.encode_record(rec, "sft", tok, 4096, train_eos=cfg.get_config("smoke").train.train_eos)
        mask, tokens = ex["loss_mask"][0], ex["tokens"][0]
        assert mask.sum() == 1
        assert tokens[mask == 1].tolist() == tok.encode(rec["target"])


def test_genrm_prompts_are_cut_as_the_judge_cuts_them():
    from types import SimpleNamespace

    from genrm_jax.judge import api, prompts

    tok = CharTokenizer()
    conv = [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "y" * 300},
            {"role": "user", "content": "Name a prime, " + "please " * 40}]
    full = len(prompts.render(tok, prompts.genrm(conv, "Seven.", "Nine.")))
    budget = full - 400
    judge = SimpleNamespace(model=SimpleNamespace(tokenizer=tok), prompt_budget=lambda: budget)
    fit = functools.partial(api.Judge.fitted_conversation, judge, builder=prompts.genrm)
    recs = baselines.genrm_records([{**PAIR, "prompt": conv}], fit=fit)
    assert [r["target"] for r in recs] == ["A", "B"]
    for r, (a, b) in zip(recs, [("Seven.", "Nine."), ("Nine.", "Seven.")]):
        ids = prompts.render(tok, r["messages"])
        assert ids == prompts.fit(tok, prompts.genrm, conv, a, b, budget).ids  # the judge's prompt, token for token
        assert r["messages"][0]["content"] == prompts.GENRM_SYSTEM  # instructions kept, conversation cut
        assert "x" * 300 not in r["messages"][-1]["content"] and "please" in r["messages"][-1]["content"]
    judge.prompt_budget = lambda: 50  # not even the answers fit: the judge skips the pair, training too
    assert baselines.genrm_records([{**PAIR, "prompt": conv}], fit=fit) == []


def test_pair_records_keep_chosen_and_rejected_and_cut_answers():
    recs = baselines.pair_records([PAIR], cut=lambda s: s[:3])
    assert recs == [{"prompt": CONV, "chosen": "Sev", "rejected": "Nin", "source": "s/1"}]


def _write(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def test_read_rationales_uses_the_order_each_rationale_was_written_for(tmp_path):
    path = _write(tmp_path / "r.jsonl", [
        {"prompt": "Name a prime.", "chosen": "Seven.", "rejected": "Nine.", "rationale": "Seven is prime. [[A]]"},
        {"prompt": CONV, "chosen": "Two.", "rejected": "Four.", "rationale": "Two is. [[A]]",
         "rationale_swapped": "B says two, a prime. [[B]]"}])
    recs = baselines.read_rationales(path)
    assert [r["target"] for r in recs] == ["Seven is prime. [[A]]", "Two is. [[A]]", "B says two, a prime. [[B]]"]
    shown_a = [r["messages"][-1]["content"].split("[The Start of Assistant A's Answer]\n")[1].split("\n")[0]
               for r in recs]
    assert shown_a == ["Seven.", "Two.", "Four."]
    assert recs[2]["source"] == f"{path}:2/rationale_swapped"


@pytest.mark.parametrize("row, where, what", [
    ({"prompt": "q", "chosen": "x", "rejected": "y", "rationale": "y is better. [[B]]"}, 2, "[[A]]"),
    ({"prompt": "q", "chosen": "x", "rejected": "y", "rationale": "ok [[A]]", "rationale_swapped": "ok"}, 2, "[[B]]"),
    ({"prompt": "q", "chosen": "x", "rejected": "y"}, 2, "'rationale' is missing"),
    ("{not json", 2, "invalid JSON"),
])
def test_read_rationales_names_file_and_line(tmp_path, row, where, what):
    path = _write(tmp_path / "r.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "rationale": "[[A]]"}, row])
    with pytest.raises(sources.DataError) as e:
        baselines.read_rationales(path)
    assert f"{path}:{where}" in str(e.value) and what in str(e.value)


def test_configs_build_every_preset():
    import importlib

    for method in METHODS:
        mod = importlib.import_module(f"experiments.configs.{method}")
        for preset in ("smoke", "default", "small", "paper"):
            c = mod.get_config(preset)
            assert ("star" in c) == (method == "cot_genrm")
            assert ("rationales_path" in c.data) == (method == "cot_genrm")
        assert mod.get_config("smoke").model == "tiny-random"
    from experiments.configs import genrm

    assert genrm.get_config().train.train_eos is False


# ------------------------------------------------------------------------------------------ end to end


def _check_run(workdir, method):
    """report.json is strict JSON with eval_0 and eval_1; the export loads; returns the report."""
    from genrm_jax.io import load_model

    report = _strict_json(workdir / "report.json")
    assert report["method"] == method and report["preset"] == "smoke"
    assert [r["stage"] for r in report["rows"]] == ["eval_0", "eval_1"]
    after = report["rows"][1]
    assert 0.0 <= after["hh-rlhf-held-out/accuracy"] <= 1.0
    assert after["train_steps"] >= 1 and np.isfinite(after["train_final_loss"])
    assert report["training_examples"] >= 1 and report["export"] == str(workdir / "export")
    model = load_model(report["export"])
    assert model.config.num_layers == 2
    return report, model


def test_genrm_smoke_end_to_end(smoke):
    workdir, *_ = smoke("genrm")
    report, _ = _check_run(workdir, "genrm")
    assert "hh-rlhf-held-out/accuracy" in report["rows"][0]  # the base model is judged too
    with open(workdir / "train.jsonl") as f:
        recs = [json.loads(line) for line in f]
    assert len(recs) == 2 * report["training_pairs"]
    assert sorted(r["target"] for r in recs) == ["A"] * report["training_pairs"] + ["B"] * report["training_pairs"]


def test_cot_genrm_smoke_trains_on_hinted_rationales_in_their_order(smoke):
    workdir, *_ = smoke("cot_genrm")
    report, _ = _check_run(workdir, "cot_genrm")
    assert "Rationalizer" in report["rationales"]
    with open(workdir / "train.jsonl") as f:
        recs = [json.loads(line) for line in f]
    assert len(recs) == report["training_records"] >= 1
    for r in recs:  # order 0 shows the chosen answer as A: its rationale must end [[A]], order 1 [[B]]
        order = r["source"].split("/o")[1].split("/")[0]
        assert verdicts.parse(r["target"], "brackets") == ("A" if order == "0" else "B")
        assert "better than response" not in r["messages"][-1]["content"]  # trained on the un-hinted prompt


@pytest.mark.parametrize("method, kind", [("bt_rm", "bt"), ("pairrm", "pairrm")])
def test_head_baseline_smoke_exports_the_trained_head(smoke, method, kind):
    import jax

    from experiments.configs import presets
    from genrm_jax.judge import api
    from genrm_jax.models import heads

    workdir, *_ = smoke(method)
    report, model = _check_run(workdir, method)
    assert report["rows"][0].get("note") and "hh-rlhf-held-out/accuracy" not in report["rows"][0]
    head = dict(np.load(workdir / "export" / "reward_head.npz"))
    assert head["w"].shape == (model.config.hidden_size,)
    assert not np.allclose(head["w"], heads.init(jax.random.PRNGKey(0), model.config)["w"])  # it trained
    # The exported model and head reproduce eval_1's scores of the held-out pairs.
    c = presets.base("smoke")
    _, sets = splits.experiment_data(c.data, c.seed)
    pairs = sets["hh-rlhf-held-out"]
    judge = api.Judge(model, api.JudgeConfig(method=kind, position="both", max_len=c.train.max_len,
                                             max_answer_tokens=c.judge.max_answer_tokens), head=head)
    p = judge.compare([r["prompt"] for r in pairs], [r["chosen"] for r in pairs], [r["rejected"] for r in pairs]).p_a
    with open(workdir / "eval" / "eval_1" / "judgments-hh-rlhf-held-out.jsonl") as f:
        logged = {row["id"]: row["p_chosen"] for row in map(json.loads, f)}
    np.testing.assert_allclose(p, [logged[r["id"]] for r in pairs], rtol=0, atol=1e-6)


def test_rerun_of_a_finished_run_trains_nothing_and_other_seed_is_refused(smoke):
    workdir, first, first_cpu = smoke("genrm")
    report = (workdir / "report.json").read_text()
    train_log = (workdir / "train" / "metrics.jsonl").read_text()
    p, seconds, cpu = _run("genrm", workdir)
    print(f"genrm rerun of a finished run: {seconds:.1f} s, {cpu:.1f} CPU s (first run {first:.1f} s, "
          f"{first_cpu:.1f} CPU s)")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (workdir / "report.json").read_text() == report
    assert (workdir / "train" / "metrics.jsonl").read_text() == train_log  # no training step ran
    assert cpu < 0.75 * first_cpu  # no compilation of a train step or an evaluation either

    p, *_ = _run("genrm", workdir, "--config.seed=1")
    assert p.returncode == 2
    errors = _error_lines(p.stderr)
    assert len(errors) == 1 and "seed" in errors[0], p.stderr[-2000:]


def test_cot_genrm_bad_rationales_file_fails_before_the_model_loads(tmp_path):
    path = _write(tmp_path / "rationales.jsonl", [
        {"prompt": "q", "chosen": "a", "rejected": "b", "rationale": "a is right. [[A]]"},
        {"prompt": "q", "chosen": "a", "rejected": "b", "rationale": "b is right. [[B]]"}])
    workdir = tmp_path / "run"
    p, *_ = _run("cot_genrm", workdir, f"--config.data.rationales_path={path}")
    assert p.returncode == 2
    errors = _error_lines(p.stderr)
    assert len(errors) == 1 and f"{path}:2" in errors[0] and "[[A]]" in errors[0], p.stderr[-2000:]
    assert not os.path.exists(workdir / "config.json")  # refused before the run directory was made
