"""Verifiable preference pairs: generated prompts with one correct and one plausibly wrong answer.

A judging task whose labels a program checks and whose skill a 135M model can acquire (the role UltraInteract's
math and code pairs play in the GenRM paper), shipped as code: the same seed gives the same pairs everywhere.

Families (`FAMILIES`), each with an in-distribution range and a shifted one (`SHIFTS`):

| family     | in distribution                                  | shifted                                           | wrong answer             |
|------------|--------------------------------------------------|---------------------------------------------------|--------------------------|
| arithmetic | a + b, two 2-digit numbers with a carry          | 3-4-digit a + b or a - b                          | dropped carry / borrow, or one digit off by one |
| counting   | how often a letter occurs in a word (4-9 letters) | how many words a sentence has (6-14 words)        | the count off by one     |
| ordering   | three 2-digit numbers, smallest to largest        | five 3-digit numbers, largest to smallest         | two neighbours swapped   |
| format     | a sentence in all lowercase, or using a word      | a sentence of exactly N words (N = 5-12)          | the constraint violated (one capital; the word replaced; N +- 1 words) |

Records have the shape of `sources` (id, prompt, chosen, rejected, subset, category, source), so every judge,
trainer and evaluation reads them unchanged; `subset` and `category` are the family (per-family accuracy and
answer-order balance come for free), and each record also carries `family`, `shift` ("in" | "shifted"),
`split` ("train" | "held_out"), `answer` (the correct value), `error` (how the rejected answer is wrong) and
`rubric` (`rubrics.CORRECTNESS_RUBRIC`, what the rubric judges of Self-Rationalization score by).

Train and held-out pairs are disjoint problems: a problem's split is a hash of (seed, its prompt), so no held-out
prompt is ever a training prompt, whatever the sizes asked for. `check(record, text)` says whether an answer
text is correct for a record's problem, read back from the text (the generator's own answers are checked by it
in the tests, and independently from the prompt text).
"""
from __future__ import annotations

import hashlib
import random
import re
from typing import Callable

from genrm_jax.data import rubrics

FAMILIES = ("arithmetic", "counting", "ordering", "format")
SHIFTS = ("in", "shifted")
SPLITS = ("train", "held_out")
HELD_OUT_FRACTION = 0.3  # share of the problem space reserved for held-out pairs (by hash of the prompt)

# Common short words (letters to count, sentence material). Lowercase, no repeats.
WORDS = (
    "apple banana cherry garden window bottle letter summer winter yellow orange purple silver butter coffee "
    "rabbit kitten puppy turtle parrot monkey pepper tomato carrot potato pillow mirror ladder basket bucket "
    "river forest valley castle bridge market school office doctor farmer singer banner hammer kettle jacket "
    "pocket rocket ticket planet desert island bottle cookie muffin noodle pizza salad cheese bread honey "
    "sugar paper pencil marble candle button zipper puzzle bubble pebble tunnel meadow harbor anchor sailor "
    "travel little middle simple happy sunny funny silly jolly merry berry cotton ribbon wallet helmet "
    "spoon plate table chair horse sheep goose mouse house green brown black white light night"
).split()
WORDS = tuple(dict.fromkeys(WORDS))
TOPICS = ("the ocean", "a rainy day", "your favorite food", "a quiet library", "the moon", "a busy market",
          "autumn leaves", "a mountain hike", "an old bicycle", "morning coffee", "a small garden", "the city",
          "a winter night", "a school trip", "a lost key", "a friendly dog")
# Sentence material for the format family: a subject, then filler words to reach any length.
SUBJECTS = ("the cat", "my friend", "the old man", "our teacher", "the small bird", "a young girl", "the farmer",
            "my brother", "the sailor", "a quiet child")
FILLER = ("walked slowly to the river and watched the water move under the bright morning sky while birds "
          "sang softly in tall green trees near an old wooden bridge").split()
SYNONYMS = {"happy": "glad", "big": "large", "quick": "fast", "quiet": "silent", "bright": "shiny",
            "small": "tiny", "old": "ancient", "cold": "chilly", "warm": "mild", "calm": "still"}


# ------------------------------------------------------------------------------------------- families
# Each generator draws one problem from `rng`: {"prompt": str, "chosen": str, "rejected": str, "answer": value,
# "error": str}. The rejected answer is always a different, wrong answer (the tests check both with `check`).


def _digits(rng: random.Random, n: int) -> int:
    return rng.randint(10 ** (n - 1), 10 ** n - 1)


def _no_carry_sum(a: int, b: int) -> int:
    """a + b with every carry dropped (digit-wise sum mod 10): the classic slip."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def _no_borrow_diff(a: int, b: int) -> int:
    """a - b (a > b) with every borrow dropped: each digit |a_i - b_i|."""
    out, place = 0, 1
    while a or b:
        out += abs(a % 10 - b % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def _digit_off_by_one(rng: random.Random, x: int) -> int:
    """x with one of its digits moved by one (never producing a leading zero or a negative number)."""
    s = list(str(x))
    for _ in range(20):
        i = rng.randrange(len(s))
        d = int(s[i]) + rng.choice((-1, 1))
        if 0 <= d <= 9 and not (i == 0 and d == 0 and len(s) > 1):
            s[i] = str(d)
            return int("".join(s))
    return x + 1


def arithmetic(rng: random.Random, shift: str) -> dict:
    if shift == "in":
        while True:
            a, b = _digits(rng, 2), _digits(rng, 2)
            if (a % 10 + b % 10) >= 10:  # a carry, so that dropping it is a plausible slip
                break
        op = "+"
    else:
        op = rng.choice("+-")
        while True:
            a, b = _digits(rng, rng.choice((3, 4))), _digits(rng, rng.choice((3, 4)))
            if op == "-" and a < b:
                a, b = b, a
            wrong_carry = _no_carry_sum(a, b) if op == "+" else _no_borrow_diff(a, b)
            if a != b and wrong_carry != (a + b if op == "+" else a - b):
                break
    answer = a + b if op == "+" else a - b
    dropped = _no_carry_sum(a, b) if op == "+" else _no_borrow_diff(a, b)
    if dropped != answer and rng.random() < 0.5:
        wrong, error = dropped, "dropped carry" if op == "+" else "dropped borrow"
    else:
        wrong, error = _digit_off_by_one(rng, answer), "digit off by one"
    prompt = f"What is {a} {op} {b}? Give the result."
    return {"prompt": prompt, "chosen": f"{a} {op} {b} = {answer}", "rejected": f"{a} {op} {b} = {wrong}",
            "answer": answer, "error": error}


def _off_by_one(rng: random.Random, n: int) -> int:
    return n + 1 if n == 0 or rng.random() < 0.5 else n - 1


def counting(rng: random.Random, shift: str) -> dict:
    if shift == "in":
        word = rng.choice([w for w in WORDS if 4 <= len(w) <= 9])
        letter = rng.choice(sorted(set(word)))
        answer = word.count(letter)
        prompt = f"How many times does the letter '{letter}' appear in the word '{word}'?"
        unit = "time" if answer == 1 else "times"
        wrong = _off_by_one(rng, answer)
        return {"prompt": prompt, "chosen": f"The letter '{letter}' appears {answer} {unit} in '{word}'.",
                "rejected": f"The letter '{letter}' appears {wrong} {'time' if wrong == 1 else 'times'} in '{word}'.",
                "answer": answer, "error": "count off by one"}
    n = rng.randint(6, 14)
    sentence = " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."
    wrong = _off_by_one(rng, n)
    return {"prompt": f"How many words are in this sentence: \"{sentence}\"",
            "chosen": f"The sentence has {n} words.", "rejected": f"The sentence has {wrong} words.",
            "answer": n, "error": "count off by one"}


def ordering(rng: random.Random, shift: str) -> dict:
    k, digits, descending = (3, 2, False) if shift == "in" else (5, 3, True)
    nums = rng.sample(range(10 ** (digits - 1), 10 ** digits), k)
    answer = sorted(nums, reverse=descending)
    wrong = list(answer)
    i = rng.randrange(k - 1)
    wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
    way = "from largest to smallest" if descending else "from smallest to largest"
    return {"prompt": f"Sort these numbers {way}: {', '.join(map(str, nums))}.",
            "chosen": ", ".join(map(str, answer)), "rejected": ", ".join(map(str, wrong)),
            "answer": answer, "error": "two neighbours swapped"}


def _sentence(rng: random.Random, n: int, extra: str | None = None) -> list[str]:
    """n lowercase words: a subject, filler, and `extra` (a required word) somewhere after the subject."""
    words = rng.choice(SUBJECTS).split()
    start = rng.randrange(len(FILLER))
    while len(words) < n:
        words.append(FILLER[start % len(FILLER)])
        start += 1
    words = words[:n]
    if extra is not None:
        words[rng.randrange(1, n)] = extra
    return words


def format_(rng: random.Random, shift: str) -> dict:
    topic = rng.choice(TOPICS)
    if shift == "in":
        if rng.random() < 0.5:
            words = _sentence(rng, rng.randint(6, 10))
            good = " ".join(words) + "."
            bad_words = list(words)
            i = rng.randrange(len(words))
            bad_words[i] = bad_words[i].capitalize()
            return {"prompt": f"Write one sentence about {topic}, in all lowercase letters.", "chosen": good,
                    "rejected": " ".join(bad_words) + ".", "answer": "lowercase", "error": "a capital letter"}
        word, other = rng.choice(sorted(SYNONYMS.items()))
        words = _sentence(rng, rng.randint(6, 10), extra=word)
        bad = [other if w == word else w for w in words]
        return {"prompt": f"Write one sentence about {topic} that uses the word '{word}'.",
                "chosen": " ".join(words).capitalize() + ".", "rejected": " ".join(bad).capitalize() + ".",
                "answer": word, "error": "the word replaced"}
    n = rng.randint(5, 12)
    words = _sentence(rng, n)
    bad = list(words)
    if rng.random() < 0.5:
        del bad[rng.randrange(1, n)]  # one word short
    else:
        bad.insert(rng.randrange(1, n + 1), rng.choice(FILLER))  # one word too many
    return {"prompt": f"Write one sentence about {topic} with exactly {n} words.",
            "chosen": " ".join(words).capitalize() + ".", "rejected": " ".join(bad).capitalize() + ".",
            "answer": n, "error": "word count off by one"}


GENERATORS: dict[str, Callable[[random.Random, str], dict]] = {
    "arithmetic": arithmetic, "counting": counting, "ordering": ordering, "format": format_}


# ---------------------------------------------------------------------------------------------- checking


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", text)]


def check(record: dict, text: str) -> bool:
    """Whether `text` answers the record's problem correctly, read from the text by a program."""
    family, answer, prompt = record["family"], record["answer"], record["prompt"][-1]["content"]
    if family == "arithmetic":
        nums = _numbers(text.split("=")[-1])
        return len(nums) == 1 and nums[0] == answer
    if family == "counting":
        nums = _numbers(text)
        return len(nums) == 1 and nums[0] == answer
    if family == "ordering":
        return _numbers(text) == list(answer)
    words = re.findall(r"[A-Za-z']+", text)
    if "lowercase" in prompt:
        return bool(words) and text == text.lower()
    if "uses the word" in prompt:
        return answer in [w.lower() for w in words]
    return len(words) == answer


# ------------------------------------------------------------------------------------------------ pairs


def _split_of(seed: int, family: str, shift: str, prompt: str) -> str:
    """"held_out" for HELD_OUT_FRACTION of the prompts, by a stable hash of (seed, prompt); else "train"."""
    digest = hashlib.blake2b(f"{seed}\x00verifiable/{family}/{shift}/{prompt}".encode(), digest_size=8).digest()
    return "held_out" if int.from_bytes(digest, "big") / 2.0 ** 64 < HELD_OUT_FRACTION else "train"


def pairs(family: str, n: int, *, shift: str = "in", split: str = "train", seed: int = 0) -> list[dict]:
    """`n` distinct pairs of `family` in `shift`, from the prompts of `split`: a prompt of one split never occurs
    in the other (a prompt may recur within a split with other answers: the format family has few prompts)."""
    if family not in GENERATORS:
        raise ValueError(f"unknown verifiable family {family!r}; expected one of {', '.join(FAMILIES)}")
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"{seed}/{family}/{shift}/{split}")
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise ValueError(f"verifiable {family}/{shift}/{split}: only {len(out)} distinct problems found, "
                             f"{n} asked for")
        p = GENERATORS[family](rng, shift)
        key = (p["prompt"], p["chosen"], p["rejected"])  # a prompt may recur with other answers (format)
        if key in seen or _split_of(seed, family, shift, p["prompt"]) != split:
            continue
        seen.add(key)
        rid = f"{family}-{shift}-{split}-{len(out):05d}"
        out.append({"id": rid, "prompt": [{"role": "user", "content": p["prompt"]}], "chosen": p["chosen"],
                    "rejected": p["rejected"], "subset": family, "category": family,
                    "source": f"verifiable(seed={seed}):{rid}", "family": family, "shift": shift, "split": split,
                    "answer": p["answer"], "error": p["error"], "rubric": rubrics.CORRECTNESS_RUBRIC})
    return out


def parse_families(families: str | tuple | list) -> list[str]:
    """"arithmetic,counting" or a sequence -> a checked list (order kept); "" or "all" = every family."""
    items = families.split(",") if isinstance(families, str) else list(families)
    items = [f.strip() for f in items if f.strip()]
    if not items or items == ["all"]:
        return list(FAMILIES)
    for f in items:
        if f not in FAMILIES:
            raise ValueError(f"unknown verifiable family {f!r}; expected one of {', '.join(FAMILIES)}")
    return items


def load(families=FAMILIES, n_per_family: int = 100, *, shift: str = "in", split: str = "train",
         seed: int = 0) -> list[dict]:
    """`n_per_family` pairs of each family (in `FAMILIES` order), all of one shift and split."""
    return [r for f in parse_families(families) for r in pairs(f, n_per_family, shift=shift, split=split, seed=seed)]


IN_SET, SHIFTED_SET = "verifiable-in", "verifiable-shifted"  # evaluation set names


def datasets(families=FAMILIES, *, train_per_family: int, eval_per_family: int, shifted_per_family: int,
             seed: int = 0) -> tuple[list[dict], dict[str, list[dict]]]:
    """(training pairs, {IN_SET: held-out in-distribution pairs, SHIFTED_SET: shifted pairs}) for an experiment:
    training on the in-distribution problems of the train split, evaluation on held-out problems never trained
    on (and on the shifted ranges, never trained on either). 0 pairs of a set leave it out."""
    train = load(families, train_per_family, shift="in", split="train", seed=seed)
    sets = {}
    if eval_per_family:
        sets[IN_SET] = load(families, eval_per_family, shift="in", split="held_out", seed=seed)
    if shifted_per_family:
        sets[SHIFTED_SET] = load(families, shifted_per_family, shift="shifted", split="held_out", seed=seed)
    return train, sets
