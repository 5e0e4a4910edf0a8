"""RewardBench 2 and RM-Bench (genrm_jax/data/benchmarks.py): layouts, errors, and the official scores computed by
hand for small made-up rows."""
import json
import math
import re
import types

import numpy as np
import pytest

from genrm_jax.data import benchmarks, sources


def write(tmp_path, rows, name="bench.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


RB2 = [  # (row, score of each answer [chosen..., rejected...])
    ({"id": "1", "prompt": "p1", "chosen": ["c"], "rejected": ["r1", "r2", "r3"], "subset": "Math"}, [.9, .1, .2, .3]),
    ({"id": "2", "prompt": "p2", "chosen": ["c"], "rejected": ["r1", "r2", "r3"], "subset": "Math"}, [.5, .5, .1, .2]),
    ({"id": "3", "prompt": "p3", "chosen": ["c"], "rejected": ["r1", "r2", "r3"], "subset": "Math"}, [.2, .9, .1, .1]),
    ({"id": 4, "prompt": [{"role": "user", "content": "p4"}], "chosen": ["c"], "rejected": ["r1", "r2", "r3"],
      "subset": "Focus", "num_correct": 1}, [.7, .1, .2, .3]),
    ({"id": "ref:1", "prompt": "t1", "chosen": ["a"], "rejected": ["x", "y"], "subset": "Ties"}, [.8, .3, .5]),
    ({"id": "tied:1", "prompt": "t1", "chosen": ["a", "b"], "rejected": ["x"], "subset": "Ties"}, [.9, .7, .4]),
    ({"id": "ref:2", "prompt": "t2", "chosen": ["a"], "rejected": ["x"], "subset": "Ties"}, [.4, .6]),
    ({"id": "tied:2", "prompt": "t2", "chosen": ["a", "b", "c"], "rejected": ["x"], "subset": "Ties"}, [.9, .5, .8, .6]),
]


def test_rewardbench2_official_scores_by_hand(tmp_path):
    recs = benchmarks.load("rewardbench2", write(tmp_path, [r for r, _ in RB2]))
    assert [r["id"] for r in recs] == ["1", "2", "3", "4", "ref:1", "tied:1", "ref:2", "tied:2"]
    assert recs[3]["prompt"] == [{"role": "user", "content": "p4"}] and recs[0]["source"].endswith(":1")
    out = benchmarks.rewardbench2_scores(recs, [s for _, s in RB2])
    assert out["subsets"]["Math"] == pytest.approx((1 + 0.5 + 0) / 3)  # a tie at the top scores 1/2
    assert out["subsets"]["Focus"] == 1.0
    # Ties: ref accuracy 1/2, tied accuracy 1/2; margins (tied, ref) vs spread: (.3, .3) vs .2 and (-.1, -.2) vs .4
    tie_break = (math.tanh(0.3 / 0.2 - 1) + math.tanh(-0.2 / 0.4 - 1)) / 2
    ties = 0.3 * 0.5 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5 + 0.01 * tie_break
    assert out["subsets"]["Ties"] == pytest.approx(ties)
    assert out["ties"]["correctness_preferred"] == 0.5 and out["ties"]["correctness_preferred_hard"] == 0.5
    assert out["overall"] == pytest.approx((0.5 + 1.0 + ties) / 3)
    assert out["n"] == {"Focus": 1, "Math": 3, "Ties": 4}


def test_best_of_n_penalises_ties():
    assert benchmarks.best_of_n([1, 0, 0, 0]) == 1.0
    assert benchmarks.best_of_n([1, 1, 1, 0]) == pytest.approx(1 / 3)
    assert benchmarks.best_of_n([0, 1, 0, 0]) == 0.0


def test_rm_bench_official_scores_by_hand(tmp_path):
    rows = [{"id": i, "prompt": f"p{i}", "chosen": ["c1", "c2", "c3"], "rejected": ["r1", "r2", "r3"], "domain": d}
            for i, d in enumerate(["chat", "chat", "math"])]
    recs = benchmarks.load("rm-bench", write(tmp_path, rows, "total_dataset.json.jsonl"))
    outcomes = [[[1, 1, 0], [1, 1, 1], [1, 1, 1]],
                [[1, 0, 0], [1, 1, 0], [1, 1, 1]],
                [[0, 0, 0], [1, 0, 0], [1, 1, 1]]]
    out = benchmarks.rm_bench_scores(recs, outcomes)
    chat, math_ = out["domains"]["chat"], out["domains"]["math"]
    # chat matrix [[1, .5, 0], [1, 1, .5], [1, 1, 1]]: hard = upper triangle (.5 + 0 + .5) / 3
    assert (chat["hard"], chat["normal"], chat["easy"]) == (pytest.approx(1 / 3), 1.0, 1.0)
    assert chat["avg"] == pytest.approx(7 / 9) and chat["matrix"][0] == [1.0, 0.5, 0.0]
    assert (math_["hard"], math_["normal"], math_["easy"]) == (0.0, pytest.approx(1 / 3), 1.0)
    assert out["hard"] == pytest.approx(1 / 6) and out["normal"] == pytest.approx(2 / 3) and out["easy"] == 1.0
    assert out["total"] == pytest.approx((7 / 9 + 4 / 9) / 2)


@pytest.mark.parametrize("fmt,row,message", [
    ("rewardbench2", {"id": "1", "prompt": "p", "rejected": ["r"], "subset": "Math"}, "field 'chosen' is missing"),
    ("rewardbench2", {"id": "1", "prompt": "p", "chosen": "c", "rejected": ["r"], "subset": "Math"},
     "field 'chosen' must be list"),
    ("rewardbench2", {"id": "1", "prompt": "p", "chosen": ["c"], "rejected": ["r", 2], "subset": "Math"},
     "field rejected[1] must be str"),
    ("rewardbench2", {"id": "1", "prompt": "p", "chosen": ["c"], "rejected": ["r"], "subset": "Math", "num_correct": 2},
     "'num_correct' is 2 but 'chosen' holds 1"),
    ("rewardbench2", {"id": "7", "prompt": "p", "chosen": ["c"], "rejected": ["r"], "subset": "Ties"},
     "'ref:<n>' or 'tied:<n>'"),
    ("rm-bench", {"id": 1, "prompt": "p", "chosen": ["a", "b"], "rejected": ["x", "y", "z"], "domain": "chat"},
     "field 'chosen' must hold 3 answers"),
    ("rm-bench", {"id": 1, "prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["x", "y", "z"], "domain": "poetry"},
     "field 'domain' must start with one of"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, fmt, row, message):
    good = ({"id": "0", "prompt": "p", "chosen": ["c"], "rejected": ["r"], "subset": "Math"} if fmt == "rewardbench2"
            else {"id": 0, "prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["x", "y", "z"], "domain": "code"})
    path = write(tmp_path, [good, row])
    with pytest.raises(sources.DataError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(message)):
        benchmarks.load(fmt, path)


def test_empty_answers_are_skipped_and_reported(tmp_path):
    rows = [{"id": "1", "prompt": "p", "chosen": ["c"], "rejected": ["r", " "], "subset": "Math"},
            {"id": "2", "prompt": "p", "chosen": ["c"], "rejected": ["r"], "subset": "Math"}]
    out = benchmarks.read("rewardbench2", write(tmp_path, rows))
    assert [r["id"] for r in out.records] == ["2"]
    assert out.skipped[0].reason == "field rejected[1] is empty or only whitespace"
    skipped = []
    assert len(benchmarks.load("rewardbench2", write(tmp_path, rows), skipped=skipped)) == 1
    assert [s.source.rsplit(":", 1)[1] for s in skipped] == ["1"]
    with pytest.raises(sources.DataError, match="no records: all 1 rows skipped"):
        benchmarks.read("rewardbench2", write(tmp_path, rows[:1], "one.jsonl"))


class LengthJudge:
    """Prefers the longer answer (P = 0.8); `first_bias` instead always prefers the answer shown as A."""

    def __init__(self, first_bias=False):
        self.first_bias, self.config = first_bias, types.SimpleNamespace(position="fixed")

    def compare(self, conversations, answers_a, answers_b, progress=False):
        p = [0.8 if self.first_bias or len(a) > len(b) else 0.2 for a, b in zip(answers_a, answers_b)]
        return types.SimpleNamespace(p_a=np.array(p))


def test_a_judge_is_scored_through_pairwise_comparisons():
    rm = [{"id": "0", "prompt": [{"role": "user", "content": "q"}], "chosen": ["aa", "aaaa", "aaaaaa"],
           "rejected": ["b", "bbb", "bbbbb"], "domain": "code"}]
    rep = benchmarks.evaluate(LengthJudge(), "rm-bench", rm)
    assert rep["scores"]["matrix"] == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]  # chosen i beats rejected j iff longer
    assert (rep["scores"]["hard"], rep["scores"]["normal"], rep["scores"]["easy"]) == (0.0, 1.0, 1.0)
    # a judge that always says "A" wins exactly the comparisons where the chosen answer was shown first
    biased = benchmarks.rm_bench_outcomes(LengthJudge(first_bias=True), rm).reshape(-1)
    assert biased.tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1]

    rb = [{"id": "1", "prompt": [{"role": "user", "content": "q"}], "chosen": ["longest"], "rejected": ["a", "bb", "ccc"],
           "subset": "Focus"},
          {"id": "2", "prompt": [{"role": "user", "content": "q"}], "chosen": ["a"], "rejected": ["bb", "ccc", "dddd"],
           "subset": "Focus"}]
    scores = benchmarks.answer_scores(LengthJudge(), rb)
    # round-robin win probability: the longest answer beats all three at 0.8
    assert scores[0][0] == pytest.approx(0.8) and scores[0][1] == pytest.approx(0.2)
    rep = benchmarks.evaluate(LengthJudge(), "rewardbench2", rb)
    assert rep["scores"]["subsets"]["Focus"] == 0.5
    assert "RewardBench 2 score 0.500" in benchmarks.table("rb2", rep)
