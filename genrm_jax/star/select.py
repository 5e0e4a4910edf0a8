"""Training records from judgment lines (star/sample.py): pure functions, samples in, records out.

- `star_sft`: every correct judgment -> SFT on rationale + verdict (the prompt the judge saw, un-hinted).
- `star_dpo`: per (pair, order), correct judgments paired one-to-one with incorrect ones (an invalid verdict
  is incorrect) -> DPO records {"messages", "chosen", "rejected"} sharing that prompt.
- `rationalized`: hinted judgments whose verdict names the better answer -> SFT on the un-hinted prompt.
- `rationalized_pairs`: per (pair, order), hinted correct judgments paired with the un-hinted incorrect ones
  of the same pair -> IPO records on the un-hinted prompt.
Every record carries `source` = "<pair id>/o<order>/s<sample>" so a training example can be traced back.
"""
from __future__ import annotations

import itertools

from genrm_jax.judge import prompts


def messages(line: dict, order: int) -> list[dict]:
    """The un-hinted judge prompt of a pair in one order (order 0: chosen shown as A)."""
    a, b = (line["chosen"], line["rejected"]) if order == 0 else (line["rejected"], line["chosen"])
    return prompts.judge(line["conversation"], a, b)


def _by_order(line: dict):
    for order, group in itertools.groupby(sorted(line["judgments"], key=lambda x: (x["order"], x["sample"])),
                                          key=lambda x: x["order"]):
        yield order, list(group)


def _src(line, x) -> str:
    return f"{line['id']}/o{x['order']}/s{x['sample']}"


def star_sft(lines: list[dict]) -> list[dict]:
    return [{"messages": messages(line, x["order"]), "target": x["text"], "source": _src(line, x)}
            for line in lines for x in line["judgments"] if x["correct"]]


def star_dpo(lines: list[dict]) -> list[dict]:
    out = []
    for line in lines:
        for order, group in _by_order(line):
            good = [x for x in group if x["correct"]]
            bad = [x for x in group if not x["correct"]]
            for w, lo in zip(good, bad):
                out.append({"messages": messages(line, order), "chosen": w["text"], "rejected": lo["text"],
                            "source": f"{_src(line, w)}>{_src(line, lo)}"})
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
                            "source": f"{_src(line, w)}(hinted)>{_src(plain[line['id']], lo)}"})
    return out
