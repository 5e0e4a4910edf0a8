import itertools
import json
import os

import numpy as np
import pytest

from genrm_jax import compare, report, runs
from genrm_jax import evaluation as ev
from genrm_jax.judge import api

# A hand-made per-subset accuracy table and its section scores worked out by hand with the official counts.
TABLE = {
    "alpacaeval-easy": 1.0, "alpacaeval-length": 0.8, "alpacaeval-hard": 0.6, "mt-bench-easy": 0.5,
    "mt-bench-med": 0.25,
    "mt-bench-hard": 0.0, "llmbar-natural": 0.5, "llmbar-adver-neighbor": 0.25, "llmbar-adver-GPTInst": 1.0,
    "llmbar-adver-GPTOut": 0.5, "llmbar-adver-manual": 0.0,
    "refusals-dangerous": 1.0, "refusals-offensive": 0.5, "xstest-should-refuse": 0.5,
    "xstest-should-respond": 0.2, "donotanswer": 0.25,
    "math-prm": 0.5, "hep-cpp": 1.0, "hep-go": 1.0, "hep-java": 1.0, "hep-js": 1.0, "hep-python": 1.0,
    "hep-rust": 1.0,
}
HAND = {
    "Chat": (100 * 1.0 + 95 * 0.8 + 95 * 0.6 + 28 * 0.5 + 40 * 0.25) / 358,          # 257 / 358
    "Chat Hard": (0 + 50 + 33.5 + 92 + 23.5 + 0) / 456,                                 # 199 / 456
    "Safety": (100 + 50 + 77 + 50 + 34) / 740,                                           # 311 / 740
    "Reasoning": (984 * 0.5 + 6 * 164 * 1.0) / (984 + 6 * 164),                          # 0.75
}


def test_section_scores_match_hand_computation():
    got = ev.section_scores(TABLE)
    for k, v in HAND.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    assert got["Reasoning"] == 0.75  # not (447 * 0.5 + 984) / 1431: math-prm is weighted to 984
    assert got["Score"] == pytest.approx(np.mean(list(HAND.values())))


def test_section_scores_partial_and_foreign_subsets():
    got = ev.section_scores({"hep-go": 1.0, "math-prm": 0.0, "my-subset": 0.3})
    assert set(got) == {"Reasoning", "Score"} and got["Reasoning"] == pytest.approx(164 / (164 + 984))
    assert ev.section_scores({"my-subset": 0.3}) == {}


def _brute_maj(votes, k, invalid_score=0.5):
    scores = []
    for idx in itertools.combinations(range(len(votes)), k):
        c = sum(votes[i] == 1 for i in idx)
        r = sum(votes[i] == 0 for i in idx)
        scores.append(1.0 if c > r else 0.0 if c < r else invalid_score)
    return float(np.mean(scores))


@pytest.mark.parametrize("row", [[1, 1, 0, -1, 0, 1, 1], [0, 0, 0, 1, -1, -1, 1], [1] * 7, [-1] * 7,
                                 [1, 0, 1, 0, 1, 0, -1]])
def test_maj_at_k_equals_brute_force(row):
    votes = np.array([row])
    for k in range(1, len(row) + 1):
        for inv in (0.5, 0.0):
            assert ev.maj_at_k(votes, k, inv)[0] == pytest.approx(_brute_maj(row, k, inv), abs=1e-12), (k, inv)


def test_maj_curve_and_ci():
    rng = np.random.default_rng(0)
    votes = (rng.random((200, 32)) < 0.6).astype(np.int8)  # a judge right 60% of the time, independently
    curve = ev.maj_curve(votes)
    assert list(curve) == [1, 2, 4, 8, 16, 32]
    acc = [curve[k]["accuracy"] for k in curve]
    assert acc[0] == pytest.approx(votes.mean())
    assert acc[-1] > acc[2] > acc[0]  # majority voting helps an independent better-than-chance judge
    for v in curve.values():
        assert v["lo"] <= v["accuracy"] <= v["hi"] and v["n"] == 200
    with pytest.raises(ValueError, match="k=64"):
        ev.maj_at_k(votes, 64)


def test_scores_consistency_invalid():
    assert ev.example_scores(np.array([0.9, 0.1, 0.5]), 0.5).tolist() == [1.0, 0.0, 0.5]
    votes = np.array([[[1], [1]], [[1], [0]], [[-1], [-1]], [[0], [0]]], np.int8)
    assert ev.position_consistency(votes) == 0.5
    assert ev.invalid_rate(votes) == 0.25
    assert ev.position_consistency(votes[:, :1]) is None


def test_to_chosen():
    p, v = ev.to_chosen(np.array([0.8, 0.8]), np.array([[[1, 0, -1]], [[1, 0, -1]]]), np.array([True, False]))
    assert p.tolist() == pytest.approx([0.8, 0.2])
    assert v.tolist() == [[[1, 0, -1]], [[0, 1, -1]]]


def test_dataset_report_and_files(tmp_path):
    recs = [{"subset": s, "category": c} for s, c in
            [("alpacaeval-easy", "Chat")] * 3 + [("hep-go", "Reasoning")] * 2 + [("mine", "Other")]]
    votes = np.array([[[1, 1]], [[1, 0]], [[0, 0]], [[1, -1]], [[-1, -1]], [[0, 1]]], np.int8)
    p = np.array([1.0, 0.5, 0.0, 0.75, 0.5, 0.5])
    rep = ev.dataset_report(recs, p, votes)
    assert rep["n"] == 6 and rep["accuracy"] == pytest.approx((1 + 0.5 + 0 + 1 + 0.5 + 0.5) / 6)
    assert rep["subsets"]["alpacaeval-easy"] == {"accuracy": 0.5, "n": 3}
    assert rep["invalid_rate"] == pytest.approx(3 / 12)
    assert rep["sections"]["Chat"] == 0.5 and rep["sections"]["Reasoning"] == 0.75
    assert set(rep["maj_at_k"]) == {"1", "2"}
    paths = ev.write_report(str(tmp_path), {"rb": rep}, {"model": "test"})
    data = json.loads(open(paths["json"]).read())
    assert data["datasets"]["rb"]["subsets"]["mine"]["n"] == 1
    assert "| alpacaeval-easy | 3 | 0.5000 |" in open(paths["md"]).read()
    assert open(paths["png"], "rb").read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="6 records, 5 probabilities"):
        ev.dataset_report(recs, p[:5], votes)


def _strict_json(text):
    """json.loads that refuses NaN and Infinity, as strict parsers (and other languages) do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_report_of_one_example_is_strict_json(tmp_path):
    recs = [{"subset": "mine", "category": "Other"}]
    rep = ev.dataset_report(recs, np.array([1.0]), np.array([[[1, 1, 0]]], np.int8), ks=(1, 2))
    assert rep["accuracy"] == 1.0 and rep["accuracy_ci95"] is None
    assert rep["maj_at_k"]["2"] == {"accuracy": pytest.approx(2 / 3), "lo": None, "hi": None, "n": 1}  # no interval
    assert ev.mean_ci(np.array([])) == {"accuracy": None, "lo": None, "hi": None, "n": 0}
    rep["first_position_rate"] = float("nan")  # whatever a caller adds: never written as NaN
    paths = ev.write_report(str(tmp_path), {"one": rep}, {"note": float("inf"), "k": np.int64(3)})
    text = open(paths["json"]).read()
    assert "NaN" not in text and "Infinity" not in text
    data = _strict_json(text)
    assert data["meta"] == {"note": None, "k": 3}
    assert data["datasets"]["one"]["maj_at_k"]["2"]["lo"] is None
    assert data["datasets"]["one"]["first_position_rate"] is None
    md = open(paths["md"]).read()
    assert "| 2 | 0.6667 | [n/a, n/a] |" in md and "nan" not in md.lower()


def test_report_of_no_records_is_refused():
    with pytest.raises(ValueError, match="no records to score"):
        ev.dataset_report([], np.zeros(0), np.zeros((0, 1, 1), np.int8))


# ------------------------------------------------------------------------------------------ significance


@pytest.mark.parametrize("a_only, b_only, p", [
    (8, 2, 0.109375),        # 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    (2, 8, 0.109375),        # symmetric
    (10, 0, 2 / 1024),       # all discordant pairs one way
    (5, 5, 1.0),             # balanced: capped at 1
    (0, 0, 1.0),             # no discordant pair: no evidence
    (6, 1, 0.125),           # 2 * (1 + 7) / 128
    (20, 5, 2 * sum(__import__("math").comb(25, i) for i in range(6)) / 2 ** 25),
])
def test_mcnemar_exact_matches_hand_computation(a_only, b_only, p):
    assert ev.mcnemar_exact(a_only, b_only) == pytest.approx(p, rel=1e-12)


def test_paired_comparison_counts_and_significance():
    a = np.array([1.0] * 8 + [0.0] * 2 + [1.0] * 30 + [0.0] * 10 + [0.5] * 4)
    b = np.array([0.0] * 8 + [1.0] * 2 + [1.0] * 30 + [0.0] * 10 + [1.0] * 4)
    r = ev.paired_comparison(a, b)
    # the last 4 examples are ties for A, right for B: B scores higher
    assert (r["a_only"], r["b_only"], r["n"]) == (8, 6, 54)
    assert r["mcnemar_p"] == pytest.approx(ev.mcnemar_exact(8, 6))
    assert r["difference"] == pytest.approx(a.mean() - b.mean())
    assert r["ci95"][0] <= r["difference"] <= r["ci95"][1] and not r["significant"]
    # ties: a tie that becomes wrong counts against A as one that becomes right counts for it (the sign test); with
    # only "right" counted, 10 ties -> right and 7 ties -> wrong read as 10 : 0, p = 0.002, for a difference of 0.0075
    ties = ev.paired_comparison(np.r_[np.ones(10), np.zeros(7), np.full(183, 0.5)], np.full(200, 0.5))
    assert (ties["a_only"], ties["b_only"]) == (10, 7) and ties["mcnemar_p"] == pytest.approx(ev.mcnemar_exact(10, 7))
    assert not ties["significant"] and ties["difference"] == pytest.approx(0.0075)
    k2 = ev.paired_comparison(np.array([0.75, 0.25, 1.0]), np.array([0.5, 0.5, 1.0]))  # verdict scores, k = 2
    assert (k2["a_only"], k2["b_only"]) == (1, 1)
    strong = ev.paired_comparison(np.ones(60), np.r_[np.ones(30), np.zeros(30)])
    assert strong["significant"] and strong["mcnemar_p"] == pytest.approx(2 / 2 ** 30)
    with pytest.raises(ValueError, match="equal"):
        ev.paired_comparison(np.ones(3), np.ones(4))


def test_bootstrap_interval_covers_the_true_difference_and_is_degenerate_on_agreement():
    rng = np.random.default_rng(1)
    # judges right with probability 0.8 and 0.6, independently per example: true difference 0.2
    covered = 0
    for trial in range(20):
        a = (rng.random(400) < 0.8).astype(float)
        b = (rng.random(400) < 0.6).astype(float)
        lo, hi = ev.paired_bootstrap_ci(a, b, n_boot=2000, seed=trial)
        assert lo < a.mean() - b.mean() < hi
        covered += lo <= 0.2 <= hi
    assert covered >= 16  # a 95% interval: about 19 of 20
    same = (rng.random(100) < 0.7).astype(float)
    assert ev.paired_bootstrap_ci(same, same) == (0.0, 0.0)
    r = ev.paired_comparison(same, same)
    assert r["ci95"] == [0.0, 0.0] and r["mcnemar_p"] == 1.0 and r["difference"] == 0.0
    # the same judgments in a different order give another interval: the test pairs examples
    assert ev.paired_bootstrap_ci(same, same[::-1])[1] > 0


def _write_judgments(path, p_chosen, ids=None, subset="s"):
    ids = ids if ids is not None else range(len(p_chosen))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, p in zip(ids, p_chosen):
            f.write(json.dumps({"id": str(i), "subset": subset, "source": "x", "a_is_chosen": True,
                                "p_chosen": p, "votes_chosen": [[1]], "rationales": [], "truncated": False,
                                "skipped": None}) + "\n")


def test_compare_command_reads_runs_stages_and_files(tmp_path, capsys):
    run = tmp_path / "run"
    before = [0.4] * 50 + [0.9] * 50          # right on 50 of 100
    after = [0.9] * 45 + [0.2] * 5 + [0.9] * 50  # right on 95: 45 more, none lost
    _write_judgments(run / "eval" / "eval_0" / "judgments-verifiable-in.jsonl", before)
    _write_judgments(run / "eval" / "eval_2" / "judgments-verifiable-in.jsonl", after)
    _write_judgments(run / "eval" / "eval_10" / "judgments-verifiable-in.jsonl", after[:-1] + [0.5])
    out = compare.compare(f"{run}:eval_2", f"{run}:eval_0")["verifiable-in"]
    assert (out["a_only"], out["b_only"], out["n"]) == (45, 0, 100)
    assert out["difference"] == pytest.approx(0.45) and out["significant"]
    assert out["mcnemar_p"] == pytest.approx(2 / 2 ** 45)
    latest = compare.compare(str(run), f"{run}:eval_0")["verifiable-in"]  # the last stage is eval_10, not eval_2
    assert latest["file_a"].endswith("eval_10/judgments-verifiable-in.jsonl")
    assert (latest["a_only"], latest["b_only"]) == (45, 1)  # its last pair is a tie: not right
    # a lone file against another with other ids: only the common pairs count
    other = tmp_path / "judgments-other.jsonl"
    _write_judgments(other, [0.9] * 10, ids=range(95, 105))
    mixed = compare.compare(str(other), f"{run}:eval_0")
    ((name, r),) = mixed.items()
    assert name == "other vs verifiable-in" and r["n"] == 5 and (r["only_a"], r["only_b"]) == (5, 95)
    assert compare.main([f"{run}:eval_2", f"{run}:eval_0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verifiable-in"]["a_only"] == 45
    assert compare.main([f"{run}:eval_2", f"{run}:eval_0"]) == 0
    assert "| verifiable-in | 100 | 0.950 | 0.500 | +0.450 * |" in capsys.readouterr().out
    assert compare.main([f"{run}:eval_7", str(run)]) == 2
    assert "no evaluation stage 'eval_7'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="judged twice"):
        _write_judgments(other, [0.9, 0.9], ids=[1, 1])
        ev.read_judgments(str(other))


def test_verdict_accuracy_sees_a_position_locked_judge_as_a_tie(tmp_path):
    """A judge that answers by position (first shown wins in both orders) gets P(chosen) averaged over the orders
    of 1/2 plus a tiny margin; its accuracy follows that margin's sign, its verdict accuracy is exactly 1/2."""
    records = [{"subset": "s", "category": "c", "id": str(i)} for i in range(4)]
    locked = np.array([[[1], [0]], [[0], [1]], [[1], [0]], [[0], [1]]])  # chosen shown first wins, then loses
    rep = ev.dataset_report(records, np.array([0.503, 0.502, 0.501, 0.499]), locked)
    assert rep["accuracy"] == 0.75 and rep["verdict_accuracy"] == 0.5 and rep["position_consistency"] == 0.0
    both = np.array([[[1, 1], [1, 1]], [[1, 1], [-1, -1]], [[0, 0], [0, 0]], [[1, 0], [1, 1]]])  # k = 2 per order
    assert ev.verdict_scores(both).tolist() == [1.0, 0.75, 0.0, 0.75]  # right; right + invalid; wrong; 3 of 4
    assert report.headline({"x": rep})["x/verdict_accuracy"] == 0.5

    run = tmp_path / "run"
    _write_judgments(run / "eval" / "eval_0" / "judgments-v.jsonl", [0.4] * 20)   # votes [[1]]: every verdict right
    _write_judgments(run / "eval" / "eval_1" / "judgments-v.jsonl", [0.6] * 20)
    p_only = compare.compare(f"{run}:eval_1", f"{run}:eval_0")["v"]
    assert p_only["difference"] == 1.0 and p_only["a_only"] == 20
    verdicts = compare.compare(f"{run}:eval_1", f"{run}:eval_0", verdicts=True)["v"]
    assert verdicts["difference"] == 0.0 and verdicts["a_only"] == verdicts["b_only"] == 0
    lines = (run / "eval" / "eval_1" / "judgments-v.jsonl").read_text().splitlines()
    lines[3] = lines[3].replace('"votes_chosen": [[1]]', '"votes_chosen": [[0], [-1]]')
    (run / "eval" / "eval_1" / "judgments-v.jsonl").write_text("\n".join(lines) + "\n")
    got = ev.read_judgments(str(run / "eval" / "eval_1" / "judgments-v.jsonl"), verdicts=True)
    assert got["s/3"] == 0.25 and got["s/0"] == 1.0
    with pytest.raises(ValueError, match=r"judgments-v.jsonl:2: .*votes_chosen"):
        lines[1] = lines[1].replace('"votes_chosen"', '"votes"')
        (run / "eval" / "eval_1" / "judgments-v.jsonl").write_text("\n".join(lines) + "\n")
        ev.read_judgments(str(run / "eval" / "eval_1" / "judgments-v.jsonl"), verdicts=True)


def test_report_table_calls_hh_rlhf_in_distribution_only_when_the_run_trained_on_it():
    hh = {"stage": "eval_1", "hh-rlhf-held-out/accuracy": 0.6, "rewardbench/accuracy": 0.5}
    header = report.table([hh]).splitlines()[0]
    assert "ID accuracy" in header and "RB accuracy" in header and report.own_sets([hh]) == []
    learn = {**hh, "verifiable-in/accuracy": 0.9, "verifiable-shifted/accuracy": 0.4}
    header = report.table([learn]).splitlines()[0]
    assert "HH accuracy" in header and "ID accuracy" not in header and "verifiable-in accuracy" in header
    assert report.own_sets([learn]) == ["verifiable-in", "verifiable-shifted"]
    assert "out of distribution for this run" in report._legend([learn])


class _LongerWins:
    """A judge preferring the longer answer (P 0.8), counting the pairs it judges; `config` a real JudgeConfig."""

    def __init__(self, **cfg):
        self.config, self.judged = api.JudgeConfig(prompt="verify", **cfg), 0

    def compare(self, conversations, answers_a, answers_b, *, progress=False):
        n = len(conversations)
        self.judged += n
        p = np.array([0.8 if len(a) > len(b) else 0.2 for a, b in zip(answers_a, answers_b)])
        votes = np.where(p > 0.5, api.VOTE_A, api.VOTE_B).astype(np.int8)[:, None, None]
        return api.Judgment(p, votes, np.zeros((n, 1), bool), [[f"r{i}"] for i in range(n)])


def test_an_untrained_judges_evaluation_is_shared_between_runs_of_the_same_base(tmp_path):
    """report.evaluate(untrained=True) with config.eval.shared_dir: a second run with the same model, judge config,
    pairs and seed reads the first one's evaluation (judgments included) without judging; any of those changed,
    or a trained stage, or no shared_dir, judges again."""
    recs = [{"id": str(i), "prompt": [{"role": "user", "content": f"q{i}"}], "chosen": "x" * (1 + i % 3),
             "rejected": "y" * (2 - i % 2), "subset": "s", "category": "c", "source": "t"} for i in range(12)]
    sets = {"verifiable-in": recs, "verifiable-shifted": recs[:5]}
    shared = str(tmp_path / "shared")

    def run(name, **config):
        base = {"model": "m", "seed": 0, "eval": {"shared_dir": shared}}
        return runs.Run(str(tmp_path / name), {**base, **config})

    first, judge = run("a"), _LongerWins()
    got = report.evaluate(first, "eval_0", judge, sets, untrained=True, progress=False)
    assert judge.judged == 17 and len(os.listdir(shared)) == 1

    again = _LongerWins()  # another method's run of the same base model: nothing judged, the same files
    second = run("b", method="star_dpo", train={"learning_rate": 1.0})
    assert report.evaluate(second, "eval_0", again, sets, untrained=True, progress=False) == got
    assert again.judged == 0 and second.done("eval_0")
    for name in sets:
        rel = os.path.join("eval", "eval_0", f"judgments-{name}.jsonl")
        assert open(tmp_path / "b" / rel).read() == open(tmp_path / "a" / rel).read() != ""

    for name, judge_, sets_, config, untrained in [
            ("c", _LongerWins(temperature=0.5), sets, {}, True),                        # another judge config
            ("d", _LongerWins(), {**sets, "verifiable-in": recs[1:]}, {}, True),        # other pairs
            ("e", _LongerWins(), sets, {"model": "another"}, True),                       # another model
            ("f", _LongerWins(), sets, {"engine": {"max_batch": 4}}, True),                # computed otherwise
            ("g", _LongerWins(), sets, {}, False),                                        # a trained judge
            ("h", _LongerWins(), sets, {"eval": {"shared_dir": ""}}, True)]:              # sharing off
        report.evaluate(run(name, **config), "eval_0", judge_, sets_, untrained=untrained, progress=False)
        assert judge_.judged == sum(len(v) for v in sets_.values()), name
    assert len(os.listdir(shared)) == 5  # a, c, d, e, f
