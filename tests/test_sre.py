"""Self-Rationalization (genrm_jax/star/sre.py and what it adds to select, sample, merge, sources, evaluation and
the pointwise judge). Pairings and merging are checked on hand-made inputs against exact results; the pointwise
judge on the tiny random model against its own next-token distribution; the experiment end to end on the smoke
preset, with a real SIGKILL during self-rationalization."""
import gzip
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiment_runs import command, environment, jsonl, kill_when, run, strict_json, tail
from genrm_jax import evaluation, merge
from genrm_jax.data import sources
from genrm_jax.judge import api, pointwise, prompts
from genrm_jax.star import judgments as star_sample
from genrm_jax.star import selection

# ------------------------------------------------------------------------------------------- selection


def _j(sample, score, correct, meta=None):
    x = {"sample": sample, "text": f"t{sample}", "score": score, "correct": correct}
    if meta is not None:
        x["meta"] = meta
    return x


def _group(gid, judgments):
    return {"id": gid, "messages": [{"role": "user", "content": gid}], "judgments": judgments}


def _pairs(records):
    return [(r["chosen"], r["rejected"]) for r in records]


def test_correct_pairing_takes_each_judgment_once_and_respects_the_margin():
    # gold score 4: samples 0 and 3 are correct; 1 (score 3), 2 (score 1) and 4 (unscored) are not
    g = _group("x/response", [_j(0, 4, True), _j(1, 3, False), _j(2, 1, False), _j(3, 4, True), _j(4, None, False)])
    recs, counts = selection.sre_pairs([g], "correct", margin=0, max_pairs=5)
    assert _pairs(recs) == [("t0", "t1"), ("t3", "t2")]
    assert [r["source"] for r in recs] == ["x/response/s0>x/response/s1", "x/response/s3>x/response/s2"]
    assert recs[0]["messages"] == g["messages"]
    assert counts == {"pairs": 2, "groups": 1, "groups_without_pairs": 0}
    # margin 2: score 3 is too close to 4; the unscored judgment counts as far
    assert _pairs(selection.sre_pairs([g], "correct", margin=2, max_pairs=5)[0]) == [("t0", "t2"), ("t3", "t4")]
    assert _pairs(selection.sre_pairs([g], "correct", margin=2, max_pairs=1)[0]) == [("t0", "t2")]
    # no incorrect judgment: no pair, counted
    none, counts = selection.sre_pairs([_group("y", [_j(0, 4, True), _j(1, 4, True)])], "correct")
    assert none == [] and counts == {"pairs": 0, "groups": 1, "groups_without_pairs": 1}


def test_majority_pairing_uses_no_labels_and_skips_ties():
    g = _group("m", [_j(0, 2, True), _j(1, 3, False), _j(2, 3, False), _j(3, 3, False), _j(4, None, True)])
    recs, _ = selection.sre_pairs([g], "majority", max_pairs=3)
    assert _pairs(recs) == [("t1", "t0"), ("t2", "t4")]  # majority score 3 chosen, whatever `correct` says
    tie = _group("t", [_j(0, 2, True), _j(1, 3, False), _j(2, 2, True), _j(3, 3, False)])
    recs, counts = selection.sre_pairs([tie], "majority")
    assert recs == [] and counts["groups_without_pairs"] == 1
    # pairwise groups: verdicts are the scores
    pw = _group("p/o0", [_j(0, "chosen", True), _j(1, "rejected", False), _j(2, "chosen", True)])
    assert _pairs(selection.sre_pairs([pw], "majority")[0]) == [("t0", "t1")]


def test_meta_pairing_ranks_by_rating_top_against_bottom():
    g = _group("r", [_j(0, 4, True, meta=2.0), _j(1, 3, False, meta=4.5), _j(2, 1, False, meta=1.0),
                     _j(3, 5, False, meta=3.0), _j(4, 2, False, meta=3.0)])
    recs, _ = selection.sre_pairs([g], "meta", max_pairs=5)
    # ranked 1 (4.5), 3 (3.0), 4 (3.0), 0 (2.0), 2 (1.0): top against bottom while strictly higher
    assert _pairs(recs) == [("t1", "t2"), ("t3", "t0")]
    flat = _group("f", [_j(0, 4, True, meta=3.0), _j(1, 3, False, meta=3.0)])
    assert selection.sre_pairs([flat], "meta")[0] == []
    with pytest.raises(ValueError, match="selection 'vote'"):
        selection.sre_pairs([g], "vote")


def test_best_of_n_and_correct_sft():
    g1 = _group("a", [_j(0, 2, False), _j(1, 4, True), _j(2, 4, True)])
    g2 = _group("b", [_j(0, 2, False)])
    assert [(r["target"], r["source"]) for r in selection.best_of_n([g1, g2])] == [("t1", "a/s1")]
    assert [r["target"] for r in selection.correct_sft([g1, g2])] == ["t1", "t2"]


def _pointwise_line(scores_c, scores_r):
    conv = [{"role": "user", "content": "q"}]
    js = []
    for name, scores in (("chosen", scores_c), ("rejected", scores_r)):
        js += [{"answer": name, "sample": i, "text": f"{name}{i}", "score": s} for i, s in enumerate(scores)]
    return {"id": "hh/1", "task": "pointwise", "rubric": "R", "gold": None, "skipped": None,
            "answers": {"chosen": {"response": "good", "conversation": conv, "reference": None},
                        "rejected": {"response": "bad", "conversation": conv, "reference": None}},
            "judgments": js}


def test_groups_of_pointwise_lines_are_per_answer_with_the_unhinted_prompt():
    line = _pointwise_line([4, 2], [3, 3])
    for x in line["judgments"]:
        x["correct"] = False
    gs = selection.groups([line])
    assert [g["id"] for g in gs] == ["hh/1/chosen", "hh/1/rejected"]
    assert gs[0]["messages"] == prompts.pointwise(line["answers"]["chosen"]["conversation"], "good", "R")
    assert [x["text"] for x in gs[1]["judgments"]] == ["rejected0", "rejected1"]
    assert selection.groups([{**line, "skipped": "too long"}]) == []


def test_pointwise_pair_correctness_matches_sample_by_sample():
    class FakeJudge:  # just what _pointwise_line reads
        class model:
            tokenizer = None
        config = pointwise.PointwiseConfig()

    record = {"id": "1", "subset": "helpful-base", "category": "helpful", "prompt": [{"role": "user", "content": "q"}],
              "chosen": "good", "rejected": "bad"}
    scored = {name: {"skipped": None, "truncated": False, "conversation": record["prompt"],
                     "judgments": [{"sample": i, "text": f"{name}{i}", "score": s, "dist": None, "expected": s}
                                   for i, s in enumerate(scores)]}
              for name, scores in (("chosen", [4, 2, None]), ("rejected", [3, 3, 1]))}
    line = star_sample._pointwise_line(FakeJudge, record, scored, hinted=False)
    assert line["rubric"] == prompts.HH_RUBRICS["helpful"]
    assert [(x["answer"], x["sample"], x["correct"]) for x in line["judgments"]] == [
        ("chosen", 0, True), ("chosen", 1, False), ("chosen", 2, False),
        ("rejected", 0, True), ("rejected", 1, False), ("rejected", 2, False)]


# ---------------------------------------------------------------------------------------------- merging


def _tree(seed, shapes=(("a", (2, 3)), ("b", (4,)))):
    rng = np.random.default_rng(seed)
    return {"layers": {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes},
            "embed": jnp.asarray(rng.normal(size=(5, 2)), jnp.bfloat16)}


def test_linear_merge_endpoints_are_exact_and_half_is_the_mean():
    a, b = _tree(0), _tree(1)
    for alpha, want in ((1.0, a), (0.0, b)):
        got = merge.linear(a, b, alpha)
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    mid = merge.linear(a, b, 0.5)
    np.testing.assert_allclose(mid["layers"]["a"], (np.asarray(a["layers"]["a"]) + np.asarray(b["layers"]["a"])) / 2,
                               rtol=1e-6)
    assert mid["embed"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(mid["embed"], np.float32),
                               (np.asarray(a["embed"], np.float32) + np.asarray(b["embed"], np.float32)) / 2,
                               rtol=1e-2)
    w = merge.linear(a, b, 0.25)["layers"]["b"]
    np.testing.assert_allclose(w, 0.25 * np.asarray(a["layers"]["b"]) + 0.75 * np.asarray(b["layers"]["b"]), rtol=1e-6)


def test_merge_refuses_different_models_naming_the_first_difference():
    a = _tree(0)
    with pytest.raises(merge.MergeError, match=r"tensor \['layers'\]\['b'\] differs: float32\[4\] vs float32\[5\]"):
        merge.linear(a, _tree(1, (("a", (2, 3)), ("b", (5,)))), 0.5)
    with pytest.raises(merge.MergeError, match=r"\['layers'\]\['c'\]"):
        merge.linear(a, _tree(1, (("a", (2, 3)), ("c", (4,)))), 0.5)
    from genrm_jax.io.tiny import TINY
    from genrm_jax.models.llama import LlamaConfig

    ca = LlamaConfig(**TINY)
    cb = ca.replace(rms_norm_eps=ca.rms_norm_eps * 2)
    with pytest.raises(merge.MergeError, match="configs differ: rms_norm_eps"):
        merge.linear(a, _tree(1), 0.5, ca, cb)
    with pytest.raises(merge.MergeError, match="alpha"):
        merge.linear(a, _tree(1), 1.5)


# ---------------------------------------------------------------------------------------------- data


def _fc_row(**over):
    row = {"orig_instruction": "Explain tides.", "orig_response": "The moon pulls the sea.",
           "orig_reference_answer": "Gravity of the moon and sun.", "orig_criteria": "Is it accurate?",
           **{f"orig_score{i}_description": f"level {i}" for i in range(1, 6)}, "orig_score": "4",
           "orig_feedback": "Mostly right."}
    row.update(over)
    return {k: v for k, v in row.items() if v is not ...}


def _write(tmp_path, rows, name="fc.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_feedback_collection_rows_and_their_errors(tmp_path):
    path = _write(tmp_path, [_fc_row(), _fc_row(orig_response="  "), _fc_row(orig_score=2)])
    out = sources.read("feedback-collection", path)
    assert [r["score"] for r in out.records] == [4, 2]
    r = out.records[0]
    assert r["prompt"] == [{"role": "user", "content": "Explain tides."}]
    assert r["rubric"] == prompts.rubric("Is it accurate?", [f"level {i}" for i in range(1, 6)])
    assert r["rubric"].splitlines()[0] == "[Is it accurate?]" and r["reference"].startswith("Gravity")
    assert [(s.source, s.reason) for s in out.skipped] == [(f"{path}:2", "field 'response' is empty or only whitespace")]
    with pytest.raises(sources.DataError, match=r"fc.jsonl:2: field 'orig_score' must be an integer score 1-5, got 6"):
        sources.read("feedback-collection", _write(tmp_path, [_fc_row(), _fc_row(orig_score=6)]))
    with pytest.raises(sources.DataError, match=r"fc.jsonl:1: field 'orig_score3_description' is missing"):
        sources.read("feedback-collection", _write(tmp_path, [_fc_row(orig_score3_description=...)]))
    plain = {k.removeprefix("orig_"): v for k, v in _fc_row().items()}  # files without the prefix
    assert sources.read("feedback-collection", _write(tmp_path, [plain], "plain.jsonl")).records[0]["score"] == 4


def test_preference_collection_rows(tmp_path):
    row = {"orig_instruction": "Q", "orig_response_A": "a", "orig_response_B": "b", "orig_preference": "B",
           "orig_criteria": "C", **{f"orig_score{i}_description": f"d{i}" for i in range(1, 6)}}
    r = sources.read("preference-collection", _write(tmp_path, [row], "pc.jsonl")).records[0]
    assert (r["chosen"], r["rejected"]) == ("b", "a") and r["rubric"].startswith("[C]")
    assert prompts.rubric_for(r) == r["rubric"]
    with pytest.raises(sources.DataError, match=r"pc.jsonl:1: field 'orig_preference' must be 'A' or 'B'"):
        sources.read("preference-collection", _write(tmp_path, [{**row, "orig_preference": "tie"}], "pc.jsonl"))


def test_rubric_for_hh_categories_and_the_default():
    assert prompts.rubric_for({"category": "harmless"}) == prompts.HH_RUBRICS["harmless"]
    assert prompts.rubric_for({"category": "Chat"}) == prompts.DEFAULT_RUBRIC


def test_pointwise_report_hand_computed():
    rep = evaluation.pointwise_report([4, 2, None, 5.0, 1], [4, 3, 2, 3, 1])
    assert rep["n"] == 5 and rep["unscored"] == 1
    assert rep["exact"] == 0.5 and rep["mae"] == pytest.approx((0 + 1 + 2 + 0) / 4)
    p, g = np.array([4, 2, 5, 1.0]), np.array([4, 3, 3, 1.0])
    assert rep["pearson"] == pytest.approx(np.corrcoef(p, g)[0, 1])
    assert rep["histogram"] == {"-4": 0, "-3": 0, "-2": 0, "-1": 1, "0": 2, "1": 0, "2": 1, "3": 0, "4": 0}
    assert evaluation.pointwise_report([3, 3], [2, 4])["pearson"] is None


# -------------------------------------------------------------------------------------- pointwise judge


@pytest.fixture(scope="module")
def tiny_judge():
    from genrm_jax.io import load_model
    from genrm_jax.sampling import Engine

    model = load_model("tiny-random")
    return model, Engine(model, max_batch=8)


ITEM = {"conversation": [{"role": "user", "content": "What is 2+2?"}], "response": "4", "rubric": prompts.DEFAULT_RUBRIC}


def test_forced_scores_are_the_label_distribution_after_the_rationale(tiny_judge):
    model, engine = tiny_judge
    cfg = pointwise.PointwiseConfig(n=3, temperature=1.0, max_new_tokens=6, seed=3)
    judge = pointwise.PointwiseJudge(model, cfg, engine=engine)
    (got,) = judge.score([ITEM])
    assert got["skipped"] is None and len(got["judgments"]) == 3
    ids, _, _ = judge.fit(ITEM)
    labels = api.verdict_label_tokens(model.tokenizer, "result")
    for x in got["judgments"]:
        rationale = x["text"][:x["text"].rindex(prompts.VERDICT_PREFIX["result"])]
        seq = list(ids) + model.tokenizer.encode(rationale + prompts.VERDICT_PREFIX["result"], add_special_tokens=False)
        lp = np.asarray(engine.score_next_token([seq], [t[-1] for t in labels]), np.float64)[0]
        want = np.exp(lp - lp.max()) / np.exp(lp - lp.max()).sum()
        np.testing.assert_allclose(x["dist"], want, atol=1e-5)
        assert x["expected"] == pytest.approx(float(np.dot(want, pointwise.SCORES)))
        assert x["score"] in pointwise.SCORES and x["text"].endswith(f"[RESULT] {x['score']}")
    greedy = pointwise.PointwiseJudge(model, pointwise.PointwiseConfig(max_new_tokens=6), engine=engine)
    (g,) = greedy.score([ITEM])
    assert g["judgments"][0]["score"] == 1 + int(np.argmax(g["judgments"][0]["dist"]))
    parse = pointwise.PointwiseJudge(model, pointwise.PointwiseConfig(max_new_tokens=6, verdict="parse"), engine=engine)
    (p,) = parse.score([ITEM])
    assert p["judgments"][0]["dist"] is None


def test_ranker_orders_by_score_and_ties_count_half(tiny_judge):
    model, engine = tiny_judge

    class Fixed(pointwise.PointwiseJudge):
        def score(self, items, progress=False):  # answers' scores by text: "a5" scores 5
            return [{"skipped": None, "truncated": False, "conversation": it["conversation"],
                     "judgments": [{"sample": 0, "text": "", "score": int(it["response"][1]), "expected": 0.0}]}
                    for it in items]

    ranker = pointwise.Ranker(Fixed(model, pointwise.PointwiseConfig(), engine=engine))
    conv = ITEM["conversation"]
    j = ranker.compare([conv] * 3, ["a5", "a2", "a3"], ["b1", "b4", "b3"])
    assert j.p_a.tolist() == [1.0, 0.0, 0.5]
    assert j.votes[:, 0, 0].tolist() == [api.VOTE_A, api.VOTE_B, api.INVALID]
    assert pointwise.consensus([3, 3, 4, None]) == 3.0 and pointwise.consensus([2, 4]) == 3.0
    assert pointwise.consensus([None]) is None


# ------------------------------------------------------------------------------------------- experiment


@pytest.fixture(scope="module")
def env():
    return environment()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    workdir = tmp_path_factory.mktemp("sre") / "run"
    log = str(workdir) + ".log"
    assert run(command("self_rationalization", "smoke", workdir), env, log) == 0, tail(log)
    return workdir


def test_smoke_reports_jsft_baselines_and_both_iterations(reference):
    report = strict_json((reference / "report.json").read_text())
    methods = [(r["method"], r["judge"]) for r in report["rows"]]
    assert methods == [(m, j) for m in ("zero-shot", "J_SFT", "self-consistency@3", "SRE iteration 1",
                                        "SRE iteration 2", "best-of-2 SFT") for j in ("pairwise", "pointwise")]
    # every trained judge is compared with the same judge untrained, on the same pairs (report.significance)
    for r in report["rows"]:
        vs = r.get("hh-rlhf-held-out/vs_eval_0")
        assert (vs is None) == (r["method"] == "zero-shot"), r["stage"]
        if vs is not None:
            assert vs["n"] >= 1 and 0.0 <= vs["mcnemar_p"] <= 1.0
    for r in report["rows"]:
        assert 0.0 <= r["hh-rlhf-held-out/accuracy"] <= 1.0
    # the bias section of each judge, before the DPO iterations (J_SFT) and after the last one
    for i, r in enumerate(report["rows"]):
        assert ("bias/master_key_rate" in r) == (r["method"] in ("J_SFT", "SRE iteration 2")), (i, r["method"])
        if "bias/master_key_rate" in r:
            assert 0.0 <= r["bias/master_key_rate"] <= 1.0
    # iteration 1 trained on exactly the pairs written for it, from the judgments sampled in its part
    recs = jsonl(reference / "train" / "iter_1.jsonl")
    lines = {t: jsonl(reference / "samples" / f"iter_1_{t}.jsonl") for t in ("pointwise", "pairwise")}
    from genrm_jax.star import sre

    want = []
    for t in ("pointwise", "pairwise"):
        want += selection.sre_pairs(selection.groups(lines[t]), "correct", max_pairs=2)[0]
    assert recs == json.loads(json.dumps(want))
    assert report["rows"][6]["training_records"] == len(recs)
    assert (reference / "export" / "config.json").exists()
    assert sre.SreConfig().samples == 10 and sre.SreConfig().iterations == 2  # the paper's N and T


def test_kill_during_self_rationalization_resumes_without_redoing_inputs(reference, env, tmp_path):
    workdir = tmp_path / "run"
    samples = workdir / "samples" / "iter_1_pointwise.jsonl"
    cmd = command("self_rationalization", "smoke", workdir)
    # start from the reference's state before iteration 1 (J_SFT trained and evaluated, the baselines
    # evaluated): the run goes straight to iteration 1's sampling, where it is killed
    shutil.copytree(reference, workdir, ignore=lambda d, names: [
        n for n in names if "iter_" in n or "best_of_n" in n or n in ("report.json", "report.md", "export", "export.json", ".lock")])

    def mid_sampling():
        if not samples.exists():
            return 0
        n = samples.read_bytes().count(b"\n")
        return n if n >= 1 else 0

    killed_at = kill_when(cmd, env, str(tmp_path / "killed.log"), mid_sampling)
    assert killed_at >= 1 and not (workdir / "stages" / "train_iter_1.json").exists()
    before = samples.read_bytes().splitlines()[:killed_at]
    log = str(tmp_path / "resumed.log")
    assert run(cmd, env, log) == 0, tail(log)
    after = samples.read_bytes().splitlines()
    assert after[:killed_at] == before  # finished inputs are kept as written, not redone
    assert len(after) == len(set(json.loads(x)["id"] for x in after))  # and each input appears once
    a = strict_json((workdir / "report.json").read_text())["rows"]
    b = strict_json((reference / "report.json").read_text())["rows"]
    assert [r["method"] for r in a] == [r["method"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["hh-rlhf-held-out/accuracy"] == rb["hh-rlhf-held-out/accuracy"]
        assert ra.get("training_records") == rb.get("training_records")
    assert jsonl(workdir / "train" / "iter_1.jsonl") == jsonl(reference / "train" / "iter_1.jsonl")


def test_bad_sre_config_is_one_line_before_the_model_loads(env, tmp_path):
    log = str(tmp_path / "bad.log")
    rc = run(command("self_rationalization", "smoke", tmp_path / "run", ["--config.sre.selection=vote"]), env, log)
    assert rc == 2
    assert "config.sre.selection='vote'" in tail(log)


def test_hinted_pairwise_prompt_states_the_label():
    m = prompts.pairwise([{"role": "user", "content": "q"}], "x", "y", "R", winner="B")[0]["content"]
    assert "Response 2 is better than response 1" in m and m.endswith("###Feedback:")
    assert "[RESULT] 2" in m
    p = prompts.pointwise([{"role": "user", "content": "q"}], "x", "R", reference="ref", hint="deserving a score of 4")
    assert "###Reference Answer (Score 5):\nref" in p[0]["content"] and "deserving a score of 4" in p[0]["content"]


def test_gzip_feedback_collection(tmp_path):
    path = tmp_path / "fc.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(_fc_row()) + "\n")
    assert sources.read("feedback-collection", str(path)).records[0]["feedback"] == "Mostly right."


def test_ablation_table_gains_a_row_per_sre_judge(reference):
    from genrm_jax import ablation_report

    loaded = {"self_rationalization": ablation_report.load_run(str(reference))}
    rows = ablation_report.rows(loaded, ["self_rationalization"])
    assert [r["method"] for r in rows] == [f"{m} ({j})" for m in ("zero-shot", "J_SFT", "self-consistency@3",
                                                                  "SRE iteration 1", "SRE iteration 2", "best-of-2 SFT")
                                           for j in ("pairwise", "pointwise")]
    assert [r["kind"] for r in rows] == ["zero-shot"] * 2 + ["trained"] * 10
    report = strict_json((reference / "report.json").read_text())
    for row, src in zip(rows, report["rows"]):
        assert row["status"] == "ok" and row["stage"] == src["stage"]
        cell = row["sets"]["hh-rlhf-held-out"]
        assert cell["accuracy"] == src["hh-rlhf-held-out/accuracy"] and cell["n"] is not None


def test_merge_command_on_two_saved_judges(tmp_path, capsys):
    from safetensors.numpy import load_file

    from genrm_jax.merge import main
    from tinyhf import make_model_dir

    a, b = make_model_dir(str(tmp_path / "a"), seed=0), make_model_dir(str(tmp_path / "b"), seed=1)
    assert main([a, b, str(tmp_path / "m"), "--alpha", "0.25"]) == 0
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    wm = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert set(wm) == set(wa)
    for k in wa:
        np.testing.assert_allclose(wm[k], 0.25 * wa[k] + 0.75 * wb[k], rtol=1e-5, atol=1e-6, err_msg=k)
    other = make_model_dir(str(tmp_path / "c"), seed=1, intermediate_size=96)
    assert main([a, other, str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "tensor ['layers']['w_down'] differs: float32[2, 128, 64] vs float32[2, 96, 64]" in err, err
    assert not (tmp_path / "bad").exists()


def test_gold_scored_data_multitask_seed_and_margin(env, tmp_path):
    """The paper's path: pointwise inputs with gold scores and their own feedback (Feedback-Collection fields),
    one multi-task SFT for J_SFT, correct-answer pairs with a margin; the report gains exact / MAE / Pearson."""
    rows = [_fc_row(orig_instruction=f"Question {i}?", orig_response=f"Answer {i}.", orig_score=str(1 + i % 5),
                    orig_feedback=f"Feedback {i}.") for i in range(40)]
    path = _write(tmp_path, rows)
    workdir = tmp_path / "run"
    log = str(tmp_path / "run.log")
    overrides = [f"--config.data.pointwise_path={path}", "--config.sre.seed_mode=multitask",
                 "--config.sre.margin=1", "--config.sre.samples=4", "--config.sre.baselines=()",
                 "--config.sre.iterations=1", "--config.eval.every_iteration=false"]
    assert run(command("self_rationalization", "smoke", workdir, overrides), env, log) == 0, tail(log)
    report = strict_json((workdir / "report.json").read_text())
    assert report["seed_mode"] == "multitask" and report["gold_eval_items"] > 0
    # evaluated untrained and after the last iteration only: J_SFT's row holds its training counts
    assert [(r["stage"], r["method"]) for r in report["rows"]] == [
        ("eval_0_pairwise", "zero-shot"), ("eval_0_pointwise", "zero-shot"), ("train_sft", "J_SFT"),
        ("eval_iter_1_pairwise", "SRE iteration 1"), ("eval_iter_1_pointwise", "SRE iteration 1")]
    assert report["rows"][2]["training_records"] > 0 and not (workdir / "eval" / "eval_sft_pointwise").exists()
    point = [r for r in report["rows"] if r.get("judge") == "pointwise"]
    # every pair trained on is at least the margin apart, a gold-score judgment first
    lines = jsonl(workdir / "samples" / "iter_1_pointwise.jsonl")
    texts = {x["text"]: (x["score"], x["correct"]) for line in lines for x in line["judgments"]}
    for rec in jsonl(workdir / "train" / "iter_1.jsonl"):
        if rec["chosen"] in texts and rec["rejected"] in texts:
            (sw, cw), (sl, cl) = texts[rec["chosen"]], texts[rec["rejected"]]
            assert cw and not cl and abs(sw - sl) >= 1
    for r in point:
        assert 0.0 <= r["gold/exact"] <= 1.0 and 0.0 <= r["gold/mae"] <= 4.0
        assert sum(r["gold/histogram"].values()) + r["gold/unscored"] == report["gold_eval_items"]
    assert (workdir / "score_errors.png").exists()
    seed = jsonl(workdir / "train" / "seed_pointwise.jsonl")  # targets from the data, not sampled
    assert seed and all(x["target"].startswith("Feedback: Feedback ") and "[RESULT] " in x["target"] for x in seed)
    assert not (workdir / "samples" / "seed_pointwise.jsonl").exists()


def test_meta_judge_rates_every_judgment_once_and_resumes(tiny_judge, tmp_path):
    model, engine = tiny_judge
    calls = []

    class Counting(pointwise.PointwiseJudge):
        def score(self, items, progress=False):
            calls.append(len(items))
            return super().score(items, progress=progress)

    meta = Counting(model, pointwise.PointwiseConfig(max_new_tokens=4), engine=engine)
    point = _pointwise_line([4, 2], [3, 3])
    conv = [{"role": "user", "content": "q"}]
    pair = {"id": "rb/2", "prompt": "pairwise", "rubric": None, "conversation": conv, "chosen": "c", "rejected": "r",
            "skipped": None, "judgments": [{"order": o, "chosen_first": o == 0, "sample": 0, "text": f"j{o}"}
                                           for o in (0, 1)]}
    path = str(tmp_path / "meta.jsonl")
    got = star_sample.rate(meta, [point, pair], path, chunk=1, progress=False)
    assert [len(r["ratings"]) for r in got] == [4, 2] and calls == [4, 2]
    assert all(1.0 <= x <= 5.0 for r in got for x in r["ratings"])
    again = star_sample.rate(meta, [point, pair], path, chunk=1, progress=False)
    assert again == got and calls == [4, 2]  # read back, not rated again
    from genrm_jax.star import sre

    rated = sre.with_ratings([point], got[:1])
    assert [x["meta"] for x in rated[0]["judgments"]] == got[0]["ratings"]


@pytest.mark.parametrize("module", ["star_dpo", "self_rationalization", "bt_rm"])
def test_a_config_that_will_not_fit_is_refused_before_the_model_loads(module, env, tmp_path):
    log = str(tmp_path / "plan.log")
    rc = run(command(module, "smoke", tmp_path / "run", ["--config.device_memory_gib=0.0001"]), env, log)
    assert rc == 2, tail(log)
    text = tail(log)
    assert "does not fit" in text and "GiB per device" in text and "mesh" in text, text
    assert not (tmp_path / "run" / "config.json").exists()


def test_fit_cuts_enough_when_turn_headers_alone_overflow():
    """A conversation whose text fits beside the instructions but whose turn headers push the prompt over the
    budget is cut, not refused (it used to be refused: each retry cut only the overflow of the one before)."""
    from chartok import CharTokenizer

    tok = CharTokenizer()
    conv = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "x" * 160},
            {"role": "user", "content": "and what about this question?"}]
    full = len(prompts.render(tok, prompts.pairwise(conv, "a", "b")))
    for budget in range(full - 12, full):
        f = prompts.fit(tok, prompts.pairwise, conv, "a", "b", budget)
        assert f.ids is not None and len(f.ids) <= budget and f.truncated, budget
        assert len(f.ids) >= budget - 24  # not much more than needed (a dropped turn takes its header along)
