"""Verifiable preference pairs (genrm_jax/data/verifiable.py): every chosen answer is right and every rejected one
wrong, checked here by a program that reads the problem from the prompt text alone (independently of the
generator's own `answer` and `check`); determinism; disjoint train / held-out problems; shifted ranges."""
import re

import pytest

from genrm_jax.data import rubrics, sources, splits
from genrm_jax.data import verifiable as v

N = 150


def _solve(family: str, prompt: str):
    """The correct answer of a problem, worked out from its prompt text; and how to read an answer text."""
    if family == "arithmetic":
        x, op, y = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\? Give the result\.", prompt).groups()
        value = int(x) + int(y) if op == "+" else int(x) - int(y)
        return value, lambda text: int(text.rsplit("=", 1)[1])
    if family == "counting":
        m = re.fullmatch(r"How many times does the letter '(.)' appear in the word '(\w+)'\?", prompt)
        if m:
            value = m.group(2).count(m.group(1))
        else:
            value = len(re.fullmatch(r'How many words are in this sentence: "(.*)"', prompt).group(1).split())
        return value, lambda text: int(re.search(r"\d+", text).group())
    if family == "ordering":
        way, nums = re.fullmatch(r"Sort these numbers from (\w+) to \w+: (.*)\.", prompt).groups()
        value = sorted((int(n) for n in nums.split(", ")), reverse=way == "largest")
        return value, lambda text: [int(n) for n in text.split(", ")]
    if "in all lowercase" in prompt:
        return True, lambda text: text == text.lower()
    m = re.search(r"uses the word '(\w+)'", prompt)
    if m:
        return True, lambda text: m.group(1) in text.lower().rstrip(".").split()
    n = int(re.search(r"exactly (\d+) words", prompt).group(1))
    return n, lambda text: len(text.rstrip(".").split())


@pytest.mark.parametrize("shift", v.SHIFTS)
@pytest.mark.parametrize("family", v.FAMILIES)
def test_chosen_is_right_and_rejected_wrong(family, shift):
    for split in v.SPLITS:
        for r in v.pairs(family, N, shift=shift, split=split, seed=3):
            prompt = r["prompt"][0]["content"]
            value, read = _solve(family, prompt)
            assert read(r["chosen"]) == value, (prompt, r["chosen"])
            assert read(r["rejected"]) != value, (prompt, r["rejected"])
            assert v.check(r, r["chosen"]) and not v.check(r, r["rejected"]), r
            if family != "format":
                assert r["answer"] == value


def test_record_shape_is_the_sources_shape():
    recs = v.load(v.FAMILIES, 5, shift="in", split="held_out")
    assert len(recs) == 5 * len(v.FAMILIES)
    for r in recs:
        assert {"id", "prompt", "chosen", "rejected", "subset", "category", "source"} <= set(r)
        assert r["prompt"][-1]["role"] == "user" and isinstance(r["prompt"][-1]["content"], str)
        assert r["subset"] == r["category"] == r["family"] and r["shift"] == "in" and r["split"] == "held_out"
        assert sources.answer_problem({"chosen": r["chosen"], "rejected": r["rejected"]}) is None
        assert rubrics.rubric_for(r) == rubrics.CORRECTNESS_RUBRIC  # what Self-Rationalization's judges score by
    assert len({splits._key(r) for r in recs}) == len(recs)  # unique pair keys
    a_first = splits.a_is_chosen(recs)
    for f in v.FAMILIES:  # answer order balanced per family, as for any source
        mine = [a for a, r in zip(a_first, recs) if r["family"] == f]
        assert abs(sum(mine) - len(mine) / 2) <= 0.5


def test_same_seed_same_pairs_other_seed_other_pairs():
    a = v.load("all", 30, shift="shifted", split="train", seed=7)
    assert a == v.load(v.FAMILIES, 30, shift="shifted", split="train", seed=7)
    b = v.load("all", 30, shift="shifted", split="train", seed=8)
    assert [r["prompt"] for r in a] != [r["prompt"] for r in b]


@pytest.mark.parametrize("shift", v.SHIFTS)
def test_train_and_held_out_problems_are_disjoint(shift):
    for f in v.FAMILIES:
        train = v.pairs(f, 300, shift=shift, split="train")
        held = v.pairs(f, 120, shift=shift, split="held_out")
        assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in held}
        assert not {r["id"] for r in train} & {r["id"] for r in held}
        assert len({(r["prompt"][0]["content"], r["chosen"], r["rejected"]) for r in held}) == 120  # distinct


def _operands(prompt):
    return [int(n) for n in re.findall(r"\d+", prompt)]


def test_shifted_ranges_are_really_shifted():
    inn = {f: [r["prompt"][0]["content"] for r in v.pairs(f, N, shift="in", split="held_out")] for f in v.FAMILIES}
    out = {f: [r["prompt"][0]["content"] for r in v.pairs(f, N, shift="shifted", split="held_out")]
           for f in v.FAMILIES}
    # arithmetic: two 2-digit addends with a carry in; 3-4 digit operands, + and -, out
    assert all(len(_operands(p)) == 2 and all(10 <= n <= 99 for n in _operands(p)) and "+" in p for p in inn["arithmetic"])
    assert all((_operands(p)[0] % 10 + _operands(p)[1] % 10) >= 10 for p in inn["arithmetic"])
    assert all(all(100 <= n <= 9999 for n in _operands(p)) for p in out["arithmetic"])
    assert {"+", "-"} <= {re.search(r"[+-]", p).group() for p in out["arithmetic"]}
    # counting: letters in a word in; words in a sentence out
    assert all("letter" in p for p in inn["counting"]) and all("words are in" in p for p in out["counting"])
    # ordering: three 2-digit numbers ascending in; five 3-digit numbers descending out
    assert all(len(_operands(p)) == 3 and max(_operands(p)) < 100 and "smallest to" in p for p in inn["ordering"])
    assert all(len(_operands(p)) == 5 and min(_operands(p)) >= 100 and "largest to" in p for p in out["ordering"])
    # format: lowercase / uses a word in; an exact word count out
    assert all("exactly" not in p for p in inn["format"]) and all("exactly" in p for p in out["format"])
    assert {"lowercase" in p for p in inn["format"]} == {True, False}


def test_datasets_for_an_experiment():
    train, sets = v.datasets(["arithmetic", "ordering"], train_per_family=20, eval_per_family=10,
                             shifted_per_family=5, seed=1)
    assert len(train) == 40 and set(sets) == {v.IN_SET, v.SHIFTED_SET}
    assert len(sets[v.IN_SET]) == 20 and len(sets[v.SHIFTED_SET]) == 10
    assert {r["split"] for r in train} == {"train"} and {r["shift"] for r in sets[v.SHIFTED_SET]} == {"shifted"}
    assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in sets[v.IN_SET]}
    assert set(v.datasets("counting", train_per_family=2, eval_per_family=2, shifted_per_family=0)[1]) == {v.IN_SET}
    with pytest.raises(ValueError, match="unknown verifiable family 'algebra'"):
        v.parse_families("arithmetic,algebra")
