"""Training records from judgment lines (star/judgments.py): pure functions, samples in, records out.

- `star_sft`: every correct judgment -> SFT on rationale + verdict (the prompt the judge saw, un-hinted).
- `star_dpo`: per (pair, order), correct judgments paired one-to-one with incorrect ones (an invalid verdict
  is incorrect) -> DPO records {"messages", "chosen", "rejected"} sharing that prompt.
- `rationalized`: hinted judgments whose verdict names the better answer -> SFT on the un-hinted prompt.
- `rationalized_pairs`: per (pair, order), hinted correct judgments paired with the un-hinted incorrect ones
  of the same pair -> IPO records on the un-hinted prompt.
- Self-Rationalization (`groups`, `sre_pairs`, `best_of_n`, `correct_sft`): see the section below.
Every record carries `source` = "<pair id>/o<order>/s<sample>" so a training example can be traced back, and
`group` = the pair id: the pipeline batches a pair's records together, so that its two answer orders meet in one
batch and the position's share of the verdict gradient cancels there (as GenRM's records do,
baselines.genrm_records; docs/learning.md).
"""
from __future__ import annotations

import itertools

from genrm_jax.judge import prompts


def messages(line: dict, order: int) -> list[dict]:
    """The un-hinted judge prompt of a pair in one order (order 0: chosen shown as A)."""
    a, b = (line["chosen"], line["rejected"]) if order == 0 else (line["rejected"], line["chosen"])
    name = line.get("prompt") or "judge"
    if name == "pairwise":
        return prompts.pairwise(line["conversation"], a, b, line["rubric"])
    return prompts.PAIRWISE[name](line["conversation"], a, b)


def _by_order(line: dict):
    for order, group in itertools.groupby(sorted(line["judgments"], key=lambda x: (x["order"], x["sample"])),
                                          key=lambda x: x["order"]):
        yield order, list(group)


def _src(line, x) -> str:
    return f"{line['id']}/o{x['order']}/s{x['sample']}"


def star_sft(lines: list[dict]) -> list[dict]:
    return [{"messages": messages(line, x["order"]), "target": x["text"], "source": _src(line, x), "group": line["id"]}
            for line in lines for x in line["judgments"] if x["correct"]]


def star_dpo(lines: list[dict]) -> list[dict]:
    out = []
    for line in lines:
        for order, group in _by_order(line):
            good = [x for x in group if x["correct"]]
            bad = [x for x in group if not x["correct"]]
            for w, lo in zip(good, bad):
                out.append({"messages": messages(line, order), "chosen": w["text"], "rejected": lo["text"],
                            "source": f"{_src(line, w)}>{_src(line, lo)}", "group": line["id"]})
    return out


def rationalized(hinted_lines: list[dict]) -> list[dict]:
    return star_sft(hinted_lines)  # same rule; `messages` is always the un-hinted prompt


def rationalized_pairs(hinted_lines: list[dict], plain_lines: list[dict]) -> list[dict]:
    plain = {line["id"]: line for line in plain_lines}
    out = []
    for line in hinted_lines:
        if line["id"] not in plain:
            continue
        other = dict(_by_order(plain[line["id"]]))
        for order, group in _by_order(line):
            good = [x for x in group if x["correct"]]
            bad = [x for x in other.get(order, []) if not x["correct"]]
            for w, lo in zip(good, bad):
                out.append({"messages": messages(line, order), "chosen": w["text"], "rejected": lo["text"],
                            "source": f"{_src(line, w)}(hinted)>{_src(plain[line['id']], lo)}",
                            "group": line["id"]})
    return out


# ------------------------------------------------------------------------------ Self-Rationalization (SRE)
# A group is one prompt and the judgments the judge wrote for it: {"id", "messages", "judgments": [{"text",
# "score" (1-5 pointwise; "chosen" / "rejected" pairwise; None when invalid), "correct", "meta" (a meta-judge's
# rating, when rated), "sample"}]}. The pairings below are pure functions of groups.

SRE_SELECTIONS = ("correct", "majority", "meta")


def pointwise_messages(line: dict, answer: str) -> list[dict]:
    a = line["answers"][answer]
    return prompts.pointwise(a["conversation"], a["response"], line["rubric"], a.get("reference"))


def groups(lines: list[dict]) -> list[dict]:
    """Groups of SRE judgment lines: pointwise lines (star/sre.py) give one group per answer judged, pairwise
    lines (sample.sample with the `pairwise` prompt) one per answer order. Skipped lines give none."""
    out = []
    for line in lines:
        if line.get("skipped"):
            continue
        if line.get("task") == "pointwise":
            for answer in line["answers"]:
                js = [x for x in line["judgments"] if x["answer"] == answer]
                out.append({"id": f"{line['id']}/{answer}", "messages": pointwise_messages(line, answer),
                            "judgments": js})
        else:
            for order, group in _by_order(line):
                js = [{**x, "score": x["verdict"]} for x in group]
                out.append({"id": f"{line['id']}/o{order}", "messages": messages(line, order), "judgments": js})
    return out


def _gap(w: dict, lo: dict) -> float:
    """The score distance of two judgments (numeric scores only; an invalid or pairwise one counts as far)."""
    if isinstance(w["score"], (int, float)) and isinstance(lo["score"], (int, float)):
        return abs(w["score"] - lo["score"])
    return float("inf")


def _majority(judgments: list[dict]):
    """The score most judgments gave, or None when no valid score has a strict plurality."""
    counts: dict = {}
    for x in judgments:
        if x["score"] is not None:
            counts[x["score"]] = counts.get(x["score"], 0) + 1
    if not counts:
        return None
    top = sorted(counts.values(), reverse=True)
    if len(top) > 1 and top[0] == top[1]:
        return None
    return max(counts, key=counts.get)


def sre_pairs(groups_: list[dict], method: str = "correct", *, margin: int = 0, max_pairs: int = 2
              ) -> tuple[list[dict], dict]:
    """DPO records {"messages", "chosen", "rejected", "source"} from groups, and counts {"pairs", "groups",
    "groups_without_pairs"}:

    - "correct": chosen = a correct judgment, rejected = an incorrect one whose score is at least `margin` away
      (pointwise scores; 0 = any); judgments are taken in sample order, each used once.
    - "majority": chosen = a judgment with the majority score (a strict plurality of valid scores; a tie gives
      no pairs), rejected = one with another score or none; no labels used.
    - "meta": chosen = the judgments ranked by their meta-judge rating from the top, rejected = from the
      bottom, paired while the chosen one is rated strictly higher.
    At most `max_pairs` pairs per group."""
    if method not in SRE_SELECTIONS:
        raise ValueError(f"selection {method!r}: expected one of {', '.join(SRE_SELECTIONS)}")
    out, empty = [], 0
    for g in groups_:
        js = sorted(g["judgments"], key=lambda x: x["sample"])
        if method == "correct":
            good = [x for x in js if x["correct"]]
            bad = [x for x in js if not x["correct"]]
            ok = lambda w, lo: _gap(w, lo) >= margin  # noqa: E731
        elif method == "majority":
            top = _majority(js)
            good = [x for x in js if top is not None and x["score"] == top]
            bad = [x for x in js if top is not None and x["score"] != top]
            ok = lambda w, lo: True  # noqa: E731
        else:
            ranked = sorted(js, key=lambda x: -x["meta"])  # stable: equal ratings keep sample order
            good, bad = ranked, ranked[::-1]
            ok = lambda w, lo: w["meta"] > lo["meta"]  # noqa: E731
        made, used = [], set()
        for w in good:
            if len(made) >= max_pairs or id(w) in used:
                continue
            lo = next((x for x in bad if id(x) not in used and x is not w and ok(w, x)), None)
            if lo is None:
                continue
            used.update((id(w), id(lo)))
            made.append({"messages": g["messages"], "chosen": w["text"], "rejected": lo["text"],
                         "source": f"{g['id']}/s{w['sample']}>{g['id']}/s{lo['sample']}"})
        empty += not made
        out.extend(made)
    return out, {"pairs": len(out), "groups": len(groups_), "groups_without_pairs": empty}


def best_of_n(groups_: list[dict]) -> list[dict]:
    """Rejection-sampling SFT: per group, the first correct judgment (by sample) as an SFT record."""
    out = []
    for g in groups_:
        w = next((x for x in sorted(g["judgments"], key=lambda x: x["sample"]) if x["correct"]), None)
        if w is not None:
            out.append({"messages": g["messages"], "target": w["text"], "source": f"{g['id']}/s{w['sample']}"})
    return out


def correct_sft(groups_: list[dict]) -> list[dict]:
    """Every correct judgment as an SFT record (seed rationales from hinted sampling)."""
    return [{"messages": g["messages"], "target": x["text"], "source": f"{g['id']}/s{x['sample']}"}
            for g in groups_ for x in sorted(g["judgments"], key=lambda x: x["sample"]) if x["correct"]]
