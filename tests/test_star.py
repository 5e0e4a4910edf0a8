"""The STaR loop (genrm_jax/star, experiment, data/splits, finetune, runs) and its entry points star_sft, star_dpo,
rationalizer.

Selection is checked on hand-made judgment lines against exact record lists; the experiments run end to end
on the tiny random model in subprocesses (with a JAX compilation cache shared by this module's runs, so each
computation compiles once per test session); crash safety is checked with a real SIGKILL mid-sampling and
mid-training, against an uninterrupted run in another directory."""
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from genrm_jax.data import splits
from genrm_jax.judge import prompts
from genrm_jax.star import judgments as star_sample
from genrm_jax.star import selection

from experiment_runs import REPO, environment, command as _cmd, config as _config, count_lines as _count_lines, \
    jsonl as _jsonl, kill_when as _kill_when, run as _run, strict_json as _strict_json, tail as _tail



@pytest.fixture(scope="module")
def env():
    return environment()


def _roundtrip(obj):
    return json.loads(json.dumps(obj))


# ------------------------------------------------------------------------------------- pure selection


def _j(pid, order, sample, verdict):
    return {"order": order, "chosen_first": order == 0, "sample": sample,
            "text": f"{pid} o{order} s{sample} says {verdict}", "p_chosen": 0.25 + 0.5 * (verdict == "chosen"),
            "verdict": verdict, "correct": verdict == "chosen"}


def _line(pid, judgments, *, hinted=False, skipped=None):
    """A judgment line in star/judgments.py's format; `judgments` is [(order, sample, verdict)]."""
    return {"id": pid, "conversation": [{"role": "user", "content": f"question of {pid}?"}],
            "chosen": f"the good answer of {pid}", "rejected": f"the bad answer of {pid}", "subset": "s",
            "hinted": hinted, "skipped": skipped, "truncated": False,
            "judgments": [_j(pid + ("/h" if hinted else ""), o, s, v) for o, s, v in judgments]}


def _prompt(line, order):
    """The un-hinted judge prompt, built here independently of selection.messages."""
    conv, good, bad = line["conversation"], line["chosen"], line["rejected"]
    return prompts.judge(conv, good, bad) if order == 0 else prompts.judge(conv, bad, good)


def _text(line, order, sample):
    (x,) = [x for x in line["judgments"] if x["order"] == order and x["sample"] == sample]
    return x["text"]


def _shuffled(lines, seed=0):
    rng = random.Random(seed)
    out = copy.deepcopy(lines)
    for line in out:
        rng.shuffle(line["judgments"])
    return out


def test_messages_are_the_unhinted_judge_prompt_in_each_order():
    line = _line("p", [])
    assert selection.messages(line, 0) == prompts.judge(line["conversation"], line["chosen"], line["rejected"])
    assert selection.messages(line, 1) == prompts.judge(line["conversation"], line["rejected"], line["chosen"])
    assert selection.messages(line, 0) != selection.messages(line, 1)
    # a line sampled with another brackets prompt trains on that prompt
    assert selection.messages({**line, "prompt": "verify"}, 1) == prompts.verify(line["conversation"],
                                                                                 line["rejected"], line["chosen"])
    for order, winner in ((0, "A"), (1, "B")):
        hinted = prompts.rationalizer(line["conversation"], *(
            (line["chosen"], line["rejected"]) if order == 0 else (line["rejected"], line["chosen"])), winner)
        assert selection.messages(line, order) != hinted


def test_star_sft_keeps_exactly_the_correct_judgments():
    p1 = _line("p1", [(0, 0, "chosen"), (0, 1, "rejected"), (1, 0, None), (1, 1, "chosen")])
    p2 = _line("p2", [(0, 0, "rejected"), (0, 1, None), (1, 0, "rejected"), (1, 1, None)])
    p3 = _line("p3", [], skipped="too long")
    p4 = _line("p4", [(1, 0, "chosen"), (0, 0, "chosen")])
    lines = [p1, p2, p3, p4]
    before = copy.deepcopy(lines)
    expected = [
        {"messages": _prompt(p1, 0), "target": _text(p1, 0, 0), "source": "p1/o0/s0", "group": "p1"},
        {"messages": _prompt(p1, 1), "target": _text(p1, 1, 1), "source": "p1/o1/s1", "group": "p1"},
        {"messages": _prompt(p4, 1), "target": _text(p4, 1, 0), "source": "p4/o1/s0", "group": "p4"},
        {"messages": _prompt(p4, 0), "target": _text(p4, 0, 0), "source": "p4/o0/s0", "group": "p4"},
    ]
    assert selection.star_sft(lines) == expected
    assert selection.star_sft(lines) == expected  # pure: same input, same output
    assert lines == before  # and the input is untouched
    assert selection.star_sft([p2, p3]) == []
    assert selection.star_sft([]) == []
    # the Rationalizer's SFT rule is the same, and its prompt is the un-hinted one
    hinted = [_line("h1", [(0, 0, "chosen"), (0, 1, "rejected"), (1, 0, "chosen")], hinted=True)]
    assert selection.rationalized(hinted) == [
        {"messages": _prompt(hinted[0], 0), "target": _text(hinted[0], 0, 0), "source": "h1/o0/s0", "group": "h1"},
        {"messages": _prompt(hinted[0], 1), "target": _text(hinted[0], 1, 0), "source": "h1/o1/s0", "group": "h1"}]

    s = star_sample.summary(lines)
    assert s == {"pairs": 4, "pairs_with_correct": 2, "pairs_with_correct_and_incorrect": 1, "skipped_pairs": 1,
                 "judgments": 10, "correct_rate": 0.4, "invalid_rate": 0.3}


def test_star_dpo_pairs_one_to_one_within_pair_and_order_only():
    p1 = _line("p1", [(0, 0, "chosen"), (0, 1, "rejected"), (0, 2, None), (0, 3, "chosen"),
                      (1, 0, "chosen"), (1, 1, "chosen"), (1, 2, "chosen"), (1, 3, "rejected")])
    # correct only in order 0, incorrect only in order 1: nothing (never across orders)
    p2 = _line("p2", [(0, 0, "chosen"), (0, 1, "chosen"), (1, 0, "rejected"), (1, 1, None)])
    # correct only in p3, incorrect only in p4 (same order): nothing (never across pairs)
    p3 = _line("p3", [(0, 0, "chosen"), (0, 1, "chosen")])
    p4 = _line("p4", [(0, 0, "rejected"), (0, 1, None)])
    p5 = _line("p5", [], skipped="too long")
    # invalid verdicts count as incorrect: they are the rejected side
    p6 = _line("p6", [(1, 0, None), (1, 1, "chosen"), (1, 2, None), (1, 3, "chosen"), (1, 4, "chosen")])
    lines = [p1, p2, p3, p4, p5, p6]
    before = copy.deepcopy(lines)

    def rec(line, order, w, lo):
        pid = line["id"]
        return {"messages": _prompt(line, order), "chosen": _text(line, order, w),
                "rejected": _text(line, order, lo), "source": f"{pid}/o{order}/s{w}>{pid}/o{order}/s{lo}",
                "group": pid}

    expected = [rec(p1, 0, 0, 1), rec(p1, 0, 3, 2), rec(p1, 1, 0, 3), rec(p6, 1, 1, 0), rec(p6, 1, 3, 2)]
    assert selection.star_dpo(lines) == expected
    assert lines == before
    for seed in range(3):  # the file order of the judgments does not matter
        assert selection.star_dpo(_shuffled(lines, seed)) == expected
    for r in expected:  # the chosen side is a correct judgment of that prompt, the rejected an incorrect one
        assert " says chosen" in r["chosen"] and " says chosen" not in r["rejected"]
    assert selection.star_dpo([p2, p3, p4, p5]) == []
    all_correct = _line("q", [(o, s, "chosen") for o in (0, 1) for s in range(4)])
    assert selection.star_dpo([all_correct]) == []
    assert selection.star_dpo([]) == []


def test_rationalized_pairs_hinted_correct_against_own_incorrect_same_pair_and_order():
    h1 = _line("p1", [(0, 0, "chosen"), (0, 1, "rejected"), (1, 0, "rejected"), (1, 1, "chosen")], hinted=True)
    u1 = _line("p1", [(0, 0, "chosen"), (0, 1, None), (1, 0, "rejected"), (1, 1, None)])
    h2 = _line("p2", [(0, 0, "chosen"), (0, 1, "chosen")], hinted=True)
    u2 = _line("p2", [(1, 0, "rejected"), (1, 1, "rejected"), (0, 0, "chosen")])  # incorrect only in order 1
    h3 = _line("p3", [(0, 0, "chosen"), (1, 0, "chosen")], hinted=True)              # no plain line for p3
    u4 = _line("p4", [(0, 0, "rejected"), (1, 0, "rejected")])                      # no hinted line for p4
    hinted, plain = [h1, h2, h3], [u4, u2, u1]
    before = copy.deepcopy((hinted, plain))
    expected = [
        {"messages": _prompt(h1, 0), "chosen": _text(h1, 0, 0), "rejected": _text(u1, 0, 1),
         "source": "p1/o0/s0(hinted)>p1/o0/s1", "group": "p1"},
        {"messages": _prompt(h1, 1), "chosen": _text(h1, 1, 1), "rejected": _text(u1, 1, 0),
         "source": "p1/o1/s1(hinted)>p1/o1/s0", "group": "p1"},
    ]
    assert selection.rationalized_pairs(hinted, plain) == expected
    assert (hinted, plain) == before
    assert selection.rationalized_pairs(_shuffled(hinted, 1), _shuffled(plain, 2)) == expected
    assert "/h " in expected[0]["chosen"] and "/h " not in expected[0]["rejected"]  # hinted vs. plain text
    assert selection.rationalized_pairs(hinted, []) == []
    assert selection.rationalized_pairs([], plain) == []


# ------------------------------------------------------------------------------------------ parts


def test_which_iterations_are_evaluated():
    from genrm_jax import report

    every = [t for t in range(1, 4) if report.evaluates_iteration({"every_iteration": True}, t, 3)]
    assert every == [1, 2, 3] == [t for t in range(1, 4) if report.evaluates_iteration(None, t, 3)]
    assert [t for t in range(1, 4) if report.evaluates_iteration({"every_iteration": False}, t, 3)] == [3]
    assert report.evaluates_iteration({"every_iteration": False}, 1, 1)


def test_what_a_method_asks_of_the_loop_is_checked_before_anything_loads():
    from genrm_jax import methods
    from genrm_jax.star import loop

    star = loop.StarConfig(samples=2)
    star.check(methods.get("star_sft"))  # SFT on single judgments: 2 samples (one per order) are enough
    star.check(methods.get("rationalizer"))
    for name in ("star_dpo", "rationalizer_ipo"):  # preference pairs need two judgments per order
        with pytest.raises(ValueError, match=r"config.star.samples=2: expected >= 4"):
            star.check(methods.get(name))
    with pytest.raises(ValueError, match="config.star: unknown settings \\['method'\\]"):
        loop.StarConfig.from_config({"method": "star_dpo"})  # the method is config.method, one spelling


def test_parts_are_a_seeded_balanced_partition_independent_of_input_order():
    records = [{"id": f"r{i}", "subset": ("a", "b", "c")[i % 3], "prompt": [], "chosen": "x", "rejected": "y"}
               for i in range(31)]
    keys = [splits._key(r) for r in records]

    def key_sets(ps):
        return [{splits._key(r) for r in p} for p in ps]

    for n in (1, 2, 3, 5):
        for seed in (0, 1):
            ps = splits.parts(records, n, seed)
            assert len(ps) == n
            sizes = [len(p) for p in ps]
            assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(records)
            sets = key_sets(ps)
            assert set().union(*sets) == set(keys)  # union is the input, and disjoint (sizes add up)
            assert ps == splits.parts(records, n, seed)  # deterministic
            assert all(r in records for p in ps for r in p)
            for shuffle_seed in (0, 1):
                shuffled = list(records)
                random.Random(shuffle_seed).shuffle(shuffled)
                assert key_sets(splits.parts(shuffled, n, seed)) == sets
    assert key_sets(splits.parts(records, 3, 0)) != key_sets(splits.parts(records, 3, 1))  # seeded
    assert splits.parts(records[:2], 3, 0) and sorted(len(p) for p in splits.parts(records[:2], 3, 0)) == [0, 1, 1]
    with pytest.raises(ValueError):
        splits.parts(records, 0)


# ------------------------------------------------------------------------------ experiments end to end

EXPERIMENTS = {  # name: (module, preset, overrides)
    "star_sft": ("star_sft", "smoke", ()),
    "star_dpo": ("star_dpo", "smoke", ()),
    "rationalizer": ("rationalizer", "smoke", ()),
    # evaluated before training and after the last iteration only
    "rationalizer_ipo": ("rationalizer", "smoke_ipo", ("--config.eval.every_iteration=false",)),
}


def _parts(c):
    train, _ = splits.experiment_data(c.data, c.seed)
    return splits.parts(train, c.star.parts, c.seed)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, env):
    """name -> finished run directory: each smoke experiment runs once for the module."""
    done = {}

    def get(name):
        if name not in done:
            module, preset, overrides = EXPERIMENTS[name]
            workdir = tmp_path_factory.mktemp(name) / "run"
            log = str(workdir) + ".log"
            rc = _run(_cmd(module, preset, workdir, overrides), env, log)
            assert rc == 0, _tail(log)
            done[name] = workdir
        return done[name]

    return get


def _check_samples_line(line, record, k, hinted):
    assert line["id"] == star_sample.pair_key(record)
    assert line["hinted"] is hinted
    conv = line["conversation"]  # as the judge saw it: cut from the left only when the prompt did not fit
    assert conv == record["prompt"] if not line["truncated"] else (conv[-1] == record["prompt"][-1]
                                                                   and len(conv) <= len(record["prompt"]))
    assert line["skipped"] is None  # the smoke data fit the context
    assert sorted((x["order"], x["sample"]) for x in line["judgments"]) == [(o, s) for o in (0, 1) for s in range(k)]
    for x in line["judgments"]:
        assert x["chosen_first"] is (x["order"] == 0)
        assert x["verdict"] in ("chosen", "rejected")  # verdict mode "force": always a verdict
        assert x["correct"] is (x["verdict"] == "chosen")
        shown = "A" if (x["verdict"] == "chosen") == (x["order"] == 0) else "B"  # order 0 shows chosen as A
        assert x["text"].endswith(f"[[{shown}]]")
        assert 0.0 <= x["p_chosen"] <= 1.0


def _check_export(export, trained: bool):
    import torch
    import transformers

    from genrm_jax.io import load_model
    from genrm_jax.models import llama

    model = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    ours = load_model(export)
    tokens = np.random.default_rng(0).integers(3, 250, size=(2, 24))
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(llama.forward(ours.params, tokens, ours.config).logits)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4
    if trained:  # the export holds the fine-tuned weights, not the initial ones
        from safetensors.numpy import load_file

        base = load_file(os.path.join(load_model("tiny-random").path, "model.safetensors"))
        new = load_file(os.path.join(export, "model.safetensors"))
        assert set(base) == set(new)
        assert any(not np.array_equal(base[k], new[k]) for k in base)


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_smoke_experiment_end_to_end(name, smoke, env, tmp_path):
    module, preset, overrides = EXPERIMENTS[name]
    workdir = smoke(name)
    c = _config(module, preset, overrides)
    k = c.star.samples // 2
    report = _strict_json((workdir / "report.json").read_text())
    rows = report["rows"]
    stages = [r["stage"] for r in rows]
    if report["stopped"] is None:
        assert stages == (["eval_0", "eval_1", "eval_2", "eval_3"] if c.eval.every_iteration
                          else ["eval_0", "train_1", "train_2", "eval_3"])
    else:
        assert 1 <= len(rows) < 4 and stages[0] == "eval_0" and "nothing to train on" in report["stopped"]
        assert stages[1:] == [f"{'eval' if c.eval.every_iteration else 'train'}_{t}" for t in range(1, len(rows))]
    assert report["method"] == c.method and report["preset"] == preset
    evaluated = [r for r in rows if r["stage"].startswith("eval_")]
    assert sorted(os.listdir(workdir / "eval")) == sorted(r["stage"] for r in evaluated)  # nothing else judged
    for r in evaluated:
        assert isinstance(r["hh-rlhf-held-out/accuracy"], float)
    # the bias section: before training and after the last iteration (judge/bias.py)
    for r in (rows[0], rows[-1]):
        assert 0.0 <= r["bias/master_key_rate"] <= 1.0 and 0.0 <= r["bias/first_win_rate"] <= 1.0
    assert "| bias master_key_rate |" in (workdir / "report.md").read_text()
    # significance: every trained stage against the untrained judge of the run, on the same pairs
    from genrm_jax import evaluation
    for r in evaluated[1:]:
        vs = r["hh-rlhf-held-out/vs_eval_0"]
        want = evaluation.compare_judgments(
            evaluation.read_judgments(workdir / "eval" / r["stage"] / "judgments-hh-rlhf-held-out.jsonl"),
            evaluation.read_judgments(workdir / "eval" / "eval_0" / "judgments-hh-rlhf-held-out.jsonl"), n_boot=2000)
        assert vs == _roundtrip(want) and vs["n"] > 0
        assert abs(vs["difference"] - (r["hh-rlhf-held-out/accuracy"] - rows[0]["hh-rlhf-held-out/accuracy"])) < 1e-9
        verdict = r["hh-rlhf-held-out/verdict_vs_eval_0"]  # the same pairs, each verdict counted
        assert abs(verdict["difference"] - (r["hh-rlhf-held-out/verdict_accuracy"]
                                             - rows[0]["hh-rlhf-held-out/verdict_accuracy"])) < 1e-9

    parts = _parts(c)
    plain_needed = c.method != "rationalizer"
    iterations = len(rows) - 1 + (report["stopped"] is not None)
    for t in range(1, iterations + 1):
        plain = workdir / "samples" / f"iter_{t}.jsonl"
        hinted = workdir / "samples" / f"iter_{t}_hinted.jsonl"
        assert plain.exists() is plain_needed
        assert hinted.exists() is c.method.startswith("rationalizer")
        files = {}
        for path, is_hinted in ((plain, False), (hinted, True)):
            if path.exists():
                lines = _jsonl(path)
                assert len(lines) == len(parts[t - 1])  # one line per pair of part t
                for line, record in zip(lines, parts[t - 1]):
                    _check_samples_line(line, record, k, is_hinted)
                files[is_hinted] = lines
        if c.method == "star_sft":
            expected = selection.star_sft(files[False])
        elif c.method == "star_dpo":
            expected = selection.star_dpo(files[False])
        elif c.method == "rationalizer":
            expected = selection.rationalized(files[True])
        else:
            expected = selection.rationalized_pairs(files[True], files[False])
        train_file = workdir / "train" / f"iter_{t}.jsonl"
        if t < len(rows):
            assert _jsonl(train_file) == _roundtrip(expected) and expected
            sft = c.method in ("star_sft", "rationalizer")
            fields = {"messages", "target", "source", "group"} if sft else {"messages", "chosen", "rejected", "source",
                                                                             "group"}
            assert all(set(r) == fields for r in expected)
            row = rows[t]
            assert row["training_records"] == len(expected) and row["pairs"] == len(parts[t - 1])
            assert row["train_steps"] >= 1 and isinstance(row["train_final_loss"], float)
        else:  # the iteration that stopped the loop trained nothing
            assert expected == [] and not train_file.exists()

    export = report["export"]
    assert export == str(workdir / "export") and os.path.isdir(export)
    _check_export(export, trained=any(r.get("train_steps", 0) > 1 for r in rows))

    if name != "star_sft":  # the exports share one format: judging with one of them is enough
        return
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5", "subset": "math"},
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome", "subset": "geo"}]))
    judge_dir = tmp_path / "judge"
    log = str(tmp_path / "llm_judge.log")
    rc = _run([sys.executable, "-m", "experiments.llm_judge", "--workdir", str(judge_dir), f"--config.model={export}",
               f"--config.eval.path={data}", "--config.eval.bias=false"], env, log, timeout=300)
    assert rc == 0, _tail(log)
    # the export carries the judging settings it was evaluated with; llm_judge uses them with no flags
    recorded = _strict_json((workdir / "export" / "judge_settings.json").read_text())
    assert recorded["verdict"] == c.judge.verdict == "force" and recorded["max_new_tokens"] == c.judge.max_new_tokens
    judged = _strict_json((judge_dir / "report.json").read_text())
    assert judged["meta"]["judges"]["cot"]["verdict"] == "force"
    assert judged["meta"]["judges"]["cot"]["max_answer_tokens"] == c.judge.max_answer_tokens
    assert judged["datasets"]["pairs/cot"]["invalid_rate"] == 0.0


def test_rerun_with_another_config_is_refused_and_same_config_resumes_finished_run(smoke, env, tmp_path):
    workdir = smoke("star_dpo")
    report = (workdir / "report.json").read_text()
    config = (workdir / "config.json").read_text()
    for override, key in (("--config.star.samples=6", "star.samples"), ("--config.train.epochs=2", "train.epochs")):
        t = time.time()
        r = subprocess.run(_cmd("star_dpo", "smoke", workdir, [override]), cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 2, r.stderr[-3000:]
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0], r.stderr
        assert time.time() - t < 60  # refused before the model loads
        assert (workdir / "config.json").read_text() == config and (workdir / "report.json").read_text() == report
    # the same command on a finished run redoes nothing and reports the same numbers
    log = str(tmp_path / "rerun.log")
    assert _run(_cmd("star_dpo", "smoke", workdir), env, log) == 0, _tail(log)
    assert _strict_json((workdir / "report.json").read_text())["rows"] == _strict_json(report)["rows"]


def test_iteration_with_nothing_to_train_on_stops_cleanly(env, tmp_path):
    # Greedy sampling: the k judgments of a (pair, order) are one and the same, so no prompt has both a correct
    # and an incorrect judgment and STaR-DPO has no preference pair.
    workdir = tmp_path / "run"
    log = str(tmp_path / "run.log")
    assert _run(_cmd("star_dpo", "smoke", workdir, ["--config.star.temperature=0"]), env, log) == 0, _tail(log)
    report = _strict_json((workdir / "report.json").read_text())
    assert [r["stage"] for r in report["rows"]] == ["eval_0"]
    assert "iteration 1" in report["stopped"] and "nothing to train on" in report["stopped"]
    lines = _jsonl(workdir / "samples" / "iter_1.jsonl")
    assert lines and selection.star_dpo(lines) == []
    assert not (workdir / "train").exists() and not (workdir / "stages" / "train_1.json").exists()
    assert (workdir / "export" / "model.safetensors").exists()  # the (unchanged) judge is still exported
    events = [_strict_json(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "sampled" and e.get("training_records") == 0 for e in events)


# Runs an experiment as `python -m experiments.<name>` would, with iteration 2 finding nothing to train on:
# argv = module, function (it returns (records, ...)), the index of its argument t, experiment, flags.
_STOPS_AT_2 = """
import importlib, runpy, sys
module, name, t_at, experiment = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
mod = importlib.import_module(module)
real = getattr(mod, name)
def second_is_empty(*args):
    out = real(*args)
    return out if args[t_at] == 1 else ([], *out[1:])
setattr(mod, name, second_is_empty)
sys.argv = [experiment, *sys.argv[5:]]
runpy.run_module(f"experiments.{experiment}", run_name="__main__")
"""


@pytest.mark.parametrize("experiment, patch, stages", [
    ("star_dpo", ["genrm_jax.star.loop", "iteration_records", "5"], ["eval_0", "eval_1"]),
    ("self_rationalization", ["genrm_jax.star.sre", "iteration_pairs", "2"],
     ["eval_0_pairwise", "eval_0_pointwise", "train_sft", "eval_iter_1_pairwise", "eval_iter_1_pointwise"])])
def test_a_loop_stopping_early_evaluates_the_judge_it_trained_last(env, tmp_path, experiment, patch, stages):
    # eval.every_iteration=false evaluates after the last iteration only; a loop that stops at iteration 2 must
    # still evaluate iteration 1's judge (its weights are what the run exports) rather than report no result
    workdir = tmp_path / "run"
    log = str(tmp_path / "run.log")
    flags = ["--config.eval.every_iteration=false", "--config.eval.bias=false"]
    flags += ["--config.star.iterations=2"] if experiment == "star_dpo" else ["--config.sre.baselines=()"]
    script = tmp_path / "stops_at_2.py"
    script.write_text(_STOPS_AT_2)
    cmd = [sys.executable, str(script), *patch, experiment, *_cmd(experiment, "smoke", workdir, flags)[3:]]
    assert _run(cmd, env, log) == 0, _tail(log)
    rows = _strict_json((workdir / "report.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == stages
    for r in rows[len(stages) - (1 if experiment == "star_dpo" else 2):]:  # iteration 1's judge
        assert r["training_records"] > 0 and r["train_steps"] > 0
        assert "hh-rlhf-held-out/vs_eval_0" in r and (workdir / "eval" / r["stage"]).is_dir()


# ------------------------------------------------------------------------------------ crash safety

CRASH = ["--config.data.train_pairs=12", "--config.star.chunk=1", "--config.star.iterations=1",
         "--config.train.epochs=3", "--config.train.checkpoint_every=1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """An uninterrupted star_dpo run with the crash tests' overrides."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    log = str(workdir) + ".log"
    assert _run(_cmd("star_dpo", "smoke", workdir, CRASH), env, log) == 0, _tail(log)
    return workdir


def _same_rows(a, b):
    assert [r["stage"] for r in a] == [r["stage"] for r in b]
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for key in ra:
            if key == "train_final_loss":
                assert ra[key] == pytest.approx(rb[key], abs=1e-5)
            else:
                assert ra[key] == rb[key], key  # accuracies, counts and CIs exactly


def _same_samples(a, b):
    assert len(a) == len(b)
    for la, lb in zip(a, b):
        ja, jb = la.pop("judgments"), lb.pop("judgments")
        assert la == lb
        assert len(ja) == len(jb)
        for x, y in zip(ja, jb):
            px, py = x.pop("p_chosen"), y.pop("p_chosen")
            assert x == y  # text, verdict, correct, order, sample
            assert px == pytest.approx(py, abs=1e-5)


def _same_export(a, b):
    from safetensors.numpy import load_file

    wa, wb = load_file(str(a / "export" / "model.safetensors")), load_file(str(b / "export" / "model.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], atol=1e-5, err_msg=k)


def _step_losses(path):
    """{step: loss} of a metrics.jsonl (a redone step keeps its last line; a line cut by a kill is ignored)."""
    out = {}
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[row["step"]] = row["loss"]
    return out


def _start_after_eval_0(reference, workdir):
    """The reference's finished zero-shot evaluation (its marker and per-pair judgments) in a new run directory:
    the run starts at iteration 1."""
    os.makedirs(workdir / "stages")
    shutil.copy(reference / "stages" / "eval_0.json", workdir / "stages" / "eval_0.json")
    shutil.copytree(reference / "eval" / "eval_0", workdir / "eval" / "eval_0")


def test_kill_during_sampling_then_resume_matches_uninterrupted(reference, env, tmp_path):
    workdir = tmp_path / "run"
    samples = workdir / "samples" / "iter_1.jsonl"
    marker = workdir / "stages" / "train_1.json"
    part = _parts(_config("star_dpo", "smoke", CRASH))[0]
    assert len(part) >= 3
    cmd = _cmd("star_dpo", "smoke", workdir, CRASH)
    _start_after_eval_0(reference, workdir)

    def mid_sampling():
        n = _count_lines(samples)
        return n if n >= 1 and not marker.exists() else 0

    killed_at = _kill_when(cmd, env, str(tmp_path / "killed.log"), mid_sampling)
    assert 1 <= killed_at < len(part), killed_at  # killed with pairs still to sample
    assert not marker.exists() and not (workdir / "report.json").exists()
    with open(samples, "ab") as f:  # what a kill in the middle of a write leaves: a cut last line
        f.write(b'{"id": "cut-by-the-kill", "judgments": [{"ord')
    log = str(tmp_path / "resumed.log")
    assert _run(cmd, env, log) == 0, _tail(log)

    _same_rows(_strict_json((workdir / "report.json").read_text())["rows"],
               _strict_json((reference / "report.json").read_text())["rows"])
    _same_samples(_jsonl(samples), _jsonl(reference / "samples" / "iter_1.jsonl"))
    assert _jsonl(workdir / "train" / "iter_1.jsonl") == _jsonl(reference / "train" / "iter_1.jsonl")
    _same_export(workdir, reference)


def test_kill_during_training_then_resume_matches_uninterrupted(reference, env, tmp_path):
    workdir = tmp_path / "run"
    ckpt = workdir / "train" / "iter_1" / "ckpt"
    marker = workdir / "stages" / "train_1.json"
    total = _strict_json((reference / "report.json").read_text())["rows"][1]["train_steps"]
    assert total >= 3
    cmd = _cmd("star_dpo", "smoke", workdir, CRASH)
    # start from the reference's finished eval_0 and samples (resumed sampling is the test above): the run goes
    # straight to training
    _start_after_eval_0(reference, workdir)
    shutil.copytree(reference / "samples", workdir / "samples")

    def mid_training():
        try:
            steps = [int(x) for x in os.listdir(ckpt) if x.isdigit()]
        except FileNotFoundError:
            return 0
        return max(steps) if steps and not marker.exists() else 0

    killed_at = _kill_when(cmd, env, str(tmp_path / "killed.log"), mid_training)
    assert 1 <= killed_at < total and not marker.exists()
    log = str(tmp_path / "resumed.log")
    assert _run(cmd, env, log) == 0, _tail(log)

    resumed = _strict_json(marker.read_text())
    assert resumed["resumed_from"] is not None and resumed["resumed_from"] >= killed_at  # from the checkpoint
    _same_rows(_strict_json((workdir / "report.json").read_text())["rows"],
               _strict_json((reference / "report.json").read_text())["rows"])
    got, want = (_step_losses(d / "train" / "iter_1" / "metrics.jsonl") for d in (workdir, reference))
    assert sorted(got) == sorted(want) == list(range(1, total + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-5), step
    assert _jsonl(workdir / "train" / "iter_1.jsonl") == _jsonl(reference / "train" / "iter_1.jsonl")
    _same_export(workdir, reference)
