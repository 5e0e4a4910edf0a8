"""Reading a verdict out of a judge's text.

Styles: "brackets" (`[[A]]` / `[[B]]`), "bare" (GenRM's single letter), "result" (`[RESULT] 1-5`) and
"result_pair" (`[RESULT] 1` or `2`, mapped to "A" / "B"). The last verdict counts: judges often restate the
format or change their mind before the end. Mentions are not verdicts: a verdict in quotation marks, or one of
several offered as alternatives ("[[A]] or [[B]]"), is ignored. No verdict returns None: an invalid judgment,
which evaluation counts and scores as a tie (0.5, as RewardBench does).
"""
from __future__ import annotations

import re

STYLES = ("brackets", "bare", "result", "result_pair")

_QUOTES = "\"'`“”‘’«»"
_BRACKETS = re.compile(r"\[\[\s*(?:assistant\s+|response\s+)?([ab])\s*\]\]", re.IGNORECASE)
_RESULT = re.compile(r"\[\s*result\s*\]\s*:?\s*\(?\s*([0-9]+)(?:\s*/\s*5)?\s*\)?", re.IGNORECASE)
# Two verdicts joined like this are alternatives being described, not a decision.
_ALTERNATIVE = re.compile(r"^[\s" + re.escape(_QUOTES) + r"]*(?:or|/|,|and|\|)[\s" + re.escape(_QUOTES) + r"]*$",
                          re.IGNORECASE)
# GenRM's bare letter, possibly dressed: "B", "b.", "**A**", "Answer: A", "Assistant B", "(A)".
_BARE_WHOLE = re.compile(r"^[\s*_(\[\"'`]*(?:(?:final\s+)?(?:answer|verdict|choice)\s*(?:is)?\s*:?\s*)?"
                         r"(?:assistant\s+|response\s+)?([ab])[\s*_)\]\"'`.!:]*$", re.IGNORECASE)
# A leading capital letter is a verdict only when what follows cannot continue a sentence that uses "A" as
# an article ("A good place to start ..."): end of line, punctuation, or "is/wins/has".
_BARE_LEAD = re.compile(r"^[\s*_(\[\"'`]*(?:assistant\s+|response\s+)?([AB])"
                        r"(?=[ \t]*(?:$|\n|[.,:;!)\]*]|(?:is|wins|has)\b))")
_BARE_SAID = re.compile(r"(?:answer|verdict|choice|better\s+(?:response|answer|one)\s+is)\s*(?:is)?\s*:?\s*"
                        r"(?:assistant\s+|response\s+)?\**\(?([AB])\b", re.IGNORECASE)


def _quoted(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    return before != "" and before in _QUOTES and after != "" and after in _QUOTES


def _decisions(text: str, pattern: re.Pattern) -> list[str]:
    """Matched values that are decisions: not quoted, and not one of a run of alternatives."""
    matches = list(pattern.finditer(text))
    alternative = [False] * len(matches)
    for i in range(len(matches) - 1):
        if _ALTERNATIVE.match(text[matches[i].end():matches[i + 1].start()]):
            alternative[i] = alternative[i + 1] = True
    return [m.group(1) for m, alt in zip(matches, alternative)
            if not alt and not _quoted(text, m.start(), m.end())]


def parse(text: str, style: str = "brackets") -> str | int | None:
    """The verdict in `text`: "A"/"B" for pairwise styles, 1-5 for "result"; None when there is none."""
    if style == "brackets":
        found = _decisions(text, _BRACKETS)
        return found[-1].upper() if found else None
    if style == "bare":
        return _bare(text)
    if style in ("result", "result_pair"):
        allowed = range(1, 6) if style == "result" else (1, 2)
        found = [int(v) for v in _decisions(text, _RESULT) if v.isdigit() and int(v) in allowed]
        if not found:
            return None
        return found[-1] if style == "result" else "AB"[found[-1] - 1]
    raise ValueError(f"unknown verdict style {style!r}; expected one of {', '.join(STYLES)}")


def _bare(text: str) -> str | None:
    m = _BARE_WHOLE.match(text)
    if m:
        return m.group(1).upper()
    brackets = _decisions(text, _BRACKETS)
    if brackets:
        return brackets[-1].upper()
    said = _BARE_SAID.findall(text)
    if said:
        return said[-1].upper()
    # Only a capital letter leading the reply counts: a lowercase "a" starting a sentence is an article.
    m = _BARE_LEAD.match(text)
    return m.group(1) if m else None


def parse_all(texts: list[str], style: str) -> list[str | int | None]:
    return [parse(t, style) for t in texts]
