"""Bias and robustness metrics (genrm_jax/judge/bias.py) on hand-made judgments and scripted judges."""
import types

import numpy as np
import pytest

from genrm_jax.judge import api, bias

NAN = float("nan")


def test_position_bias_by_hand():
    # P(chosen) with chosen shown first | shown second
    p = [[0.9, 0.2],   # verdicts chosen | rejected: the first-shown won both times, a flip
         [0.8, 0.7],   # chosen | chosen: first won once, consistent
         [0.3, 0.6],   # rejected | chosen: the second-shown won both times, a flip
         [NAN, 0.4],   # no verdict | rejected: first won (order 2 shows rejected first); no pair
         [0.5, 0.9]]   # tie (no verdict) | chosen: second won
    rep = bias.position_bias(p)
    # first-shown wins: row0 2, row1 1 (of 2), row2 0, row3 1 (of 1), row4 0 (of 1) -> 4 of 8 verdicts
    assert rep["first_win_rate"] == pytest.approx(4 / 8) and rep["n_verdicts"] == 8
    assert rep["flip_rate"] == pytest.approx(2 / 3) and rep["n_pairs_both_orders"] == 3
    assert rep["consistency"] == pytest.approx(1 / 3)
    always_first = bias.position_bias([[0.9, 0.1]] * 4)
    assert always_first["first_win_rate"] == 1.0 and always_first["flip_rate"] == 1.0


def test_length_bias_by_hand():
    p = [0.9, 0.6, 0.2, 0.5, 0.1, 0.7]
    lc = [10, 20, 30, 40, 5, 8]
    lr = [5, 10, 10, 10, 50, 8]  # chosen longer for the first four, shorter for the fifth, equal for the last
    rep = bias.length_bias(p, lc, lr)
    assert rep["accuracy_chosen_longer"] == pytest.approx((1 + 1 + 0 + 0.5) / 4) and rep["n_chosen_longer"] == 4
    assert rep["accuracy_chosen_shorter"] == pytest.approx(0.0) and rep["n_chosen_shorter"] == 1
    # verdicts on unequal pairs: 0.9 longer, 0.6 longer, 0.2 shorter(rejected), (tie out), 0.1 -> rejected = longer
    assert rep["prefers_longer_rate"] == pytest.approx(3 / 4) and rep["n_verdicts"] == 4
    empty = bias.length_bias([0.9], [3], [3])
    assert empty["accuracy_chosen_longer"] is None and empty["prefers_longer_rate"] is None


def test_attack_rates_by_hand():
    rep = bias.attack_rates({":": [0.9, 0.2, 0.5], "Solution": [0.1, 0.3, 0.8]})
    assert rep["per_key"] == {":": pytest.approx(1 / 3), "Solution": pytest.approx(2 / 3)}
    assert rep["per_key_ties"][":"] == pytest.approx(1 / 3)
    assert rep["rate"] == pytest.approx(3 / 6) and rep["tie_rate"] == pytest.approx(1 / 6) and rep["n_pairs"] == 3


def test_master_keys_hold_the_papers_examples():
    assert {":", ".", "Thought process:", "Let's solve this problem step by step.", "Solution"} <= set(bias.MASTER_KEYS)


class Scripted:
    """A judge whose P(shown A) comes from `rule(conversation, shown_a, shown_b)`; returns api.Judgment."""

    def __init__(self, rule, position="fixed"):
        self.rule, self.config = rule, types.SimpleNamespace(position=position)
        self.calls = 0

    def compare(self, conversations, answers_a, answers_b, *, progress=False, rubrics=None):
        self.calls += 1
        n = len(conversations)
        swapped = api.presentation(n, self.config.position, 0)
        sample = np.zeros((n, swapped.shape[1], 1))
        for i in range(n):
            for o, s in enumerate(swapped[i]):
                a, b = (answers_b[i], answers_a[i]) if s else (answers_a[i], answers_b[i])
                p_shown_a = self.rule(conversations[i], a, b)
                sample[i, o, 0] = 1.0 - p_shown_a if s else p_shown_a
        votes = np.where(sample > 0.5, api.VOTE_A, api.VOTE_B).astype(np.int8)
        return api.Judgment(sample.mean(axis=(1, 2)), votes, swapped, [[] for _ in range(n)], sample_p_a=sample)


RECORDS = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": c, "rejected": r}  # chosen longer, longer,
           for i, (c, r) in enumerate([("good answer here", "bad"), ("good answer", "bad"),  # shorter, shorter
                                       ("good", "bad answer here"), ("ok", "bad answer here too")])]


@pytest.mark.parametrize("position", ["fixed", "both"])
def test_report_of_a_judge_that_always_picks_the_first_answer(position):
    judge = Scripted(lambda c, a, b: 0.8, position)
    rep = bias.bias_report(judge, RECORDS, keys=(":", "Solution"))
    assert rep["position"]["first_win_rate"] == 1.0 and rep["position"]["flip_rate"] == 1.0
    assert rep["accuracy_both_orders"] == 0.5  # P(chosen) averages to 0.5 over the two orders: a tie
    assert rep["master_key"]["tie_rate"] == 1.0 and rep["master_key"]["rate"] == 0.0
    assert judge.calls == 2  # the pairs, then every key at once
    assert "first-shown win rate 100.0%" in bias.bias_table("x", rep)


def test_report_of_a_judge_that_prefers_the_longer_answer_and_a_master_key():
    def rule(conv, a, b):
        if "Thought process:" in (a, b):
            return 0.9 if a == "Thought process:" else 0.1
        return 0.7 if len(a) > len(b) else 0.3

    rep = bias.bias_report(Scripted(rule), RECORDS, keys=(":", "Thought process:"), attack_pairs=3)
    ln = rep["length"]
    assert ln["prefers_longer_rate"] == 1.0
    assert (ln["accuracy_chosen_longer"], ln["accuracy_chosen_shorter"]) == (1.0, 0.0)
    assert rep["position"]["flip_rate"] == 0.0 and rep["position"]["first_win_rate"] == pytest.approx(0.5)
    assert rep["master_key"]["per_key"] == {":": 0.0, "Thought process:": 1.0}  # ":" is shorter than every answer
    assert rep["master_key"]["n_pairs"] == 3


def test_swapped_presentation_is_refused():
    with pytest.raises(ValueError, match="position"):
        bias.bias_report(Scripted(lambda c, a, b: 0.5, "swap"), RECORDS, keys=())
