import itertools
import json

import numpy as np
import pytest

from genrm_jax import evaluation as ev

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
