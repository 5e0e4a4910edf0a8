"""Preference pairs from local files, normalised to one record shape.

Every adapter yields the same dict, so judges, trainers and evaluations never look at a dataset's own layout:

    {"id": str, "prompt": [{"role": "user"|"assistant"|"system", "content": str}, ...],  # last turn: user
     "chosen": str, "rejected": str, "subset": str, "category": str, "source": "file:line"}

Formats (`fmt`):
- "rewardbench": RewardBench rows (`id`, `prompt` str, `chosen`, `rejected`, `subset`, `category`?).
- "hh-rlhf": Anthropic HH-RLHF rows `{"chosen": transcript, "rejected": transcript}`; the shared turns become the
  prompt and the two last assistant turns the answers. The split name (parent directory) is the subset.
- "ultrafeedback": HuggingFaceH4/ultrafeedback_binarized rows (`chosen`/`rejected` are message lists that end
  with the assistant answer).
- "ultrainteract": openbmb/UltraInteract_pair rows (`trajectory` of `{from, value}`, `chosen`, `rejected`).
- "jsonl": the generic format: `prompt` (a string, or a list of `{role, content}`), `chosen`, `rejected`,
  optional `subset`, `category`, `id`.
- "preference-collection": prometheus-eval/Preference-Collection rows (`orig_instruction`, `orig_response_A`,
  `orig_response_B`, `orig_preference` "A"/"B", `orig_criteria`, `orig_score{1..5}_description`, optional
  `orig_reference_answer`, `orig_feedback`); the record also holds `rubric`, `reference` and `feedback`.

Pointwise format (`POINTWISE_FORMATS`), one response with a gold score instead of a pair:
- "feedback-collection": prometheus-eval/Feedback-Collection rows (`orig_instruction`, `orig_response`,
  optional `orig_reference_answer`, `orig_criteria`, `orig_score{1..5}_description`, `orig_score` 1-5,
  optional `orig_feedback`; each field also without the `orig_` prefix) ->
  {"id", "prompt", "response", "reference", "rubric", "score", "feedback", "subset", "category", "source"}.
  A score outside 1-5 or a missing score description is a DataError; an empty response a skipped row.

Files may be `.jsonl`, `.jsonl.gz`, a `.json` array, or `.parquet` (rows numbered from 1 like lines), in UTF-8.
Malformed input (bad JSON, a byte that is not UTF-8, a missing or mistyped field, an id repeated within a subset)
raises `DataError` naming file, line(s) and field, and so does a truncated or corrupt `.gz` file and a file that
yields no records at all.

Rows that are well-formed but cannot be judged or trained on are a property of the public data, not a malformed
file: they are skipped, counted and reported by line (see `read`). One rule, `answer_problem`, holds for every
format and every consumer (evaluation here, training in `pipeline.encode_record`): a pair whose chosen or
rejected answer is empty or whitespace, or whose two answers are identical (ignoring surrounding whitespace), is
skipped with a reason naming the field. HH-RLHF rows are also skipped when the two transcripts share no prefix
that ends before an Assistant turn.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import re
import zlib
from typing import Callable, Iterator

from genrm_jax.data import rubrics

FORMATS = ("rewardbench", "hh-rlhf", "ultrafeedback", "ultrainteract", "jsonl", "preference-collection",
           "feedback-collection")
POINTWISE_FORMATS = ("feedback-collection",)
ROLES = ("user", "assistant", "system")

# Bundled copies (see files/README.md for origin and licence).
FILES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")
REWARDBENCH = os.path.join(FILES_DIR, "rewardbench", "filtered.jsonl.gz")
HH_RLHF_SPLITS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")


log = logging.getLogger(__name__)


class DataError(ValueError):
    """Malformed input; the message names file, line and field."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    source: str  # "file:line"
    reason: str


@dataclasses.dataclass
class Loaded:
    records: list[dict]
    skipped: list[Skipped]
    rows: int  # rows read from the file (records + skipped)


def hh_rlhf_path(split: str) -> str:
    """The bundled HH-RLHF test file of `split`."""
    if split not in HH_RLHF_SPLITS:
        raise DataError(f"unknown HH-RLHF split {split!r}; expected one of {', '.join(HH_RLHF_SPLITS)}")
    return os.path.join(FILES_DIR, "hh-rlhf", split, "test.jsonl.gz")


def load(fmt: str, path: str, *, limit: int | None = None, skipped: list | None = None) -> list[dict]:
    """Records of a preference file in `fmt`; at most `limit` of them. Skipped rows are logged by line and, given
    a `skipped` list, appended to it (`Skipped`), so that a report can count them."""
    return records_of(path, read(fmt, path, limit=limit), skipped)


def records_of(path: str, out: "Loaded", skipped: list | None = None) -> list[dict]:
    """`out.records`; its skipped rows logged by line and, given a `skipped` list, appended to it."""
    if out.skipped:
        log.warning("%s: skipped %d of %d rows: %s", path, len(out.skipped), out.rows, skipped_summary(out.skipped))
        if skipped is not None:
            skipped.extend(out.skipped)
    return out.records


def read(fmt: str, path: str, *, limit: int | None = None) -> Loaded:
    """Like `load`, but also returns the skipped rows and the number of rows read.

    A file that yields no record (no rows, or every row skipped) is a DataError, unless `limit` is 0.
    """
    if fmt not in _ADAPTERS:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if limit is not None and limit < 0:
        raise DataError(f"{path}: limit must be >= 0, got {limit}")
    adapter = _ADAPTERS[fmt]
    records, skipped, rows = [], [], 0
    first_at: dict[tuple, str] = {}  # (subset, id) -> "file:line": resumable outputs are keyed by both
    for where, row in iter_rows(path):
        if limit is not None and len(records) >= limit:
            break
        rows += 1
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        try:
            rec = adapter(row, where, path)
        except _Skip as s:
            skipped.append(Skipped(where, str(s)))
            continue
        answers = ({"response": rec["response"]} if fmt in POINTWISE_FORMATS
                   else {"chosen": rec["chosen"], "rejected": rec["rejected"]})
        problem = answer_problem(answers)
        if problem:
            skipped.append(Skipped(where, problem[1]))
            continue
        first = first_at.setdefault((rec["subset"], rec["id"]), where)
        if first != where:
            raise DataError(f"{where}: id {rec['id']!r} (subset {rec['subset']!r}) is also the id of {first}; ids "
                            "must be unique within a subset (results are matched to records by them)")
        records.append(rec)
    if not records and limit != 0:
        if not rows:
            raise DataError(f"{path}: no records (the file holds no rows)")
        raise DataError(f"{path}: no records: all {rows} rows skipped ({skipped_summary(skipped)})")
    return Loaded(records, skipped, rows)


def skipped_summary(skipped: list[Skipped], max_lines: int = 20) -> str:
    """"<reason> (lines 2, 5)" per reason, in first-seen order; at most `max_lines` line numbers each."""
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        by_reason.setdefault(s.reason, []).append(s.source.rsplit(":", 1)[1])
    parts = []
    for reason, lines in by_reason.items():
        more = f" and {len(lines) - max_lines} more" if len(lines) > max_lines else ""
        parts.append(f"{reason} (lines {', '.join(lines[:max_lines])}{more})")
    return "; ".join(parts)


def answer_problem(answers: dict[str, str]) -> tuple[str, str] | None:
    """Why a record's answers cannot be judged or trained on, as (code, message), or None when they can.

    The one rule every consumer applies (sources for evaluation, `pipeline.encode_record` for training):
    ("empty_<field>", "field '<field>' is empty or only whitespace") when an answer is, and
    ("identical_answers", "fields 'chosen' and 'rejected' are identical") when two answers are the same text,
    ignoring surrounding whitespace. `answers`: {field name: text}, e.g. {"chosen": ..., "rejected": ...}.
    """
    for field, text in answers.items():
        if not text.strip():
            return f"empty_{field}", f"field {field!r} is empty or only whitespace"
    if len(answers) > 1 and len({text.strip() for text in answers.values()}) == 1:
        return "identical_answers", f"fields {' and '.join(repr(f) for f in answers)} are identical"
    return None


# ---------------------------------------------------------------------------------------------------- file rows


def iter_rows(path: str) -> Iterator[tuple[str, object]]:
    """(\"file:line\", parsed row) for each row of a jsonl(.gz), json-array or parquet file."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if path.endswith(".parquet"):
        yield from _parquet_rows(path)
        return
    if path.endswith(".gz"):
        try:
            yield from _text_rows(path, gzip.open)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a truncated or corrupt gzip stream
            raise DataError(f"{path}: damaged compressed file ({type(e).__name__}: {e}); copy or download it "
                            "again") from None
    else:
        yield from _text_rows(path, open)


def _text_rows(path: str, opener) -> Iterator[tuple[str, object]]:
    # surrogateescape keeps a bad byte as one lone surrogate, so that it can be reported with its line and column
    # (strict UTF-8 text never holds one).
    with opener(path, "rt", encoding="utf-8", errors="surrogateescape") as f:
        if path.endswith(".json") or path.endswith(".json.gz"):
            yield from _json_array_rows(path, f)
            return
        for lineno, line in enumerate(f, 1):
            _check_utf8(line, path, lineno)
            if not line.strip():
                continue  # a trailing blank line is common and harmless
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            yield f"{path}:{lineno}", row


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # how errors="surrogateescape" decodes a byte that is not UTF-8


def _check_utf8(text: str, path: str, first_line: int = 1) -> None:
    bad = _NOT_UTF8.search(text)
    if bad is None:
        return
    line = first_line + text.count("\n", 0, bad.start())
    column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
    raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{ord(bad.group()) - 0xdc00:02x} at column {column})")


def _json_array_rows(path, f):
    text = f.read()
    _check_utf8(text, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json file must hold an array of rows, got {type(data).__name__}")
    for i, row in enumerate(data, 1):
        yield f"{path}:{i}", row


def _parquet_rows(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or convert to JSONL") from None
    table = pq.read_table(path)
    i = 0
    for batch in table.to_batches():
        for row in batch.to_pylist():
            i += 1
            yield f"{path}:{i}", row


# ---------------------------------------------------------------------------------------------------- fields


class _Skip(Exception):
    """A row that is well-formed but cannot become a pair (reported, not fatal)."""


def _field(row: dict, name: str, where: str, kind=str, optional: bool = False):
    if name not in row or row[name] is None:
        if optional:
            return None
        raise DataError(f"{where}: field {name!r} is missing")
    value = row[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {name!r} must be {want}, got {type(value).__name__}")
    return value


def _messages(value, where: str, name: str, *, role_key="role", content_key="content", role_map=None) -> list[dict]:
    if not isinstance(value, list):
        raise DataError(f"{where}: field {name!r} must be a list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(f"{where}: field {name}[{i}] must be an object with {role_key!r} and {content_key!r}")
        role, content = m.get(role_key), m.get(content_key)
        role = (role_map or {}).get(role, role)
        if role not in ROLES:
            raise DataError(f"{where}: field {name}[{i}].{role_key} must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise DataError(f"{where}: field {name}[{i}].{content_key} must be str, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def _check_prompt(prompt: list[dict], where: str, name: str = "prompt") -> list[dict]:
    if not prompt:
        raise DataError(f"{where}: field {name!r} has no turns")
    if prompt[-1]["role"] != "user":
        raise DataError(f"{where}: field {name!r} must end with a user turn, ends with {prompt[-1]['role']!r}")
    return prompt


def _record(rid, prompt, chosen, rejected, subset, category, where) -> dict:
    return {"id": str(rid), "prompt": prompt, "chosen": chosen, "rejected": rejected, "subset": subset,
            "category": category, "source": where}


def _line(where: str) -> str:
    return where.rsplit(":", 1)[1]


# ---------------------------------------------------------------------------------------------------- adapters


def _generic(row: dict, where: str, path: str) -> dict:
    prompt = _field(row, "prompt", where, (str, list))
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, where, "prompt")
    subset = _field(row, "subset", where, optional=True) or "default"
    category = _field(row, "category", where, optional=True) or subset
    rid = _field(row, "id", where, (str, int), optional=True)
    return _record(rid if rid is not None else _line(where), _check_prompt(prompt, where),
                   _field(row, "chosen", where), _field(row, "rejected", where), subset, category, where)


def _rewardbench(row: dict, where: str, path: str) -> dict:
    _field(row, "id", where, (str, int))
    _field(row, "subset", where)
    return _generic(row, where, path)


# A turn starts at a "Human:" / "Assistant:" tag at the start of the transcript or after a blank line.
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
_HH_ANSWER = "\n\nAssistant:"


def hh_turns(transcript: str) -> list[dict]:
    """Turns of an HH-RLHF transcript. Consecutive turns of one role (a few public rows have two Assistant
    turns in a row) are merged, since chat templates expect alternation."""
    parts = _HH_TURN.split(transcript)
    turns: list[dict] = []
    if parts[0].strip():
        turns.append({"role": "user", "content": parts[0].strip()})  # text before the first tag
    for tag, text in zip(parts[1::2], parts[2::2]):
        role = "user" if tag == "Human" else "assistant"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text.strip()
        else:
            turns.append({"role": role, "content": text.strip()})
    return turns


def hh_split(chosen: str, rejected: str) -> tuple[list[dict], str, str]:
    """(shared prompt, chosen answer, rejected answer) of two HH-RLHF transcripts; ValueError says why not.

    The answers start after the last "Assistant:" tag that both transcripts reach with identical text. Splitting
    on text rather than on parsed turns keeps rows whose answers themselves contain "Human:"/"Assistant:" (the
    model continuing the dialogue), which is how the labellers saw them.
    """
    cut = chosen.rfind(_HH_ANSWER, 0, len(os.path.commonprefix([chosen, rejected])))
    if cut < 0:
        raise ValueError("the transcripts share no prefix that ends before an Assistant turn")
    a, b = chosen[cut + len(_HH_ANSWER):].strip(), rejected[cut + len(_HH_ANSWER):].strip()
    problem = answer_problem({"chosen": a, "rejected": b})
    if problem:
        raise ValueError(problem[1])
    prompt = hh_turns(chosen[:cut])
    if not prompt or prompt[-1]["role"] != "user":
        raise ValueError("the shared prefix does not end with a Human turn")
    return prompt, a, b


def _hh_rlhf(row: dict, where: str, path: str) -> dict:
    chosen, rejected = _field(row, "chosen", where), _field(row, "rejected", where)
    try:
        prompt, a, b = hh_split(chosen, rejected)
    except ValueError as e:
        raise _Skip(str(e)) from None
    split = os.path.basename(os.path.dirname(os.path.abspath(path))) or "hh-rlhf"
    category = "harmless" if split.startswith("harmless") else "helpful" if split.startswith("helpful") else split
    return _record(f"{split}-{_line(where)}", prompt, a, b, split, category, where)


def _final_answer(messages: list[dict], where: str, name: str) -> tuple[list[dict], str]:
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field {name!r} must end with the assistant's answer")
    return messages[:-1], messages[-1]["content"]


def _ultrafeedback(row: dict, where: str, path: str) -> dict:
    c_prompt, chosen = _final_answer(_messages(_field(row, "chosen", where, list), where, "chosen"), where, "chosen")
    r_prompt, rejected = _final_answer(_messages(_field(row, "rejected", where, list), where, "rejected"), where,
                                       "rejected")
    if c_prompt != r_prompt:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' answer different conversations")
    if not c_prompt:  # some dumps keep the prompt only in `prompt`
        c_prompt = [{"role": "user", "content": _field(row, "prompt", where)}]
    rid = _field(row, "prompt_id", where, (str, int), optional=True)
    source = _field(row, "source", where, optional=True) or "ultrafeedback"
    return _record(rid if rid is not None else _line(where), _check_prompt(c_prompt, where, "chosen"), chosen,
                   rejected, source, "ultrafeedback", where)


_UI_ROLES = {"human": "user", "gpt": "assistant", "observation": "user"}


def _ultrainteract(row: dict, where: str, path: str) -> dict:
    traj = _messages(_field(row, "trajectory", where, list), where, "trajectory", role_key="from",
                     content_key="value", role_map=_UI_ROLES)
    rid = _field(row, "id", where, (str, int), optional=True)
    task = _field(row, "task", where, optional=True) or "ultrainteract"
    dataset = _field(row, "dataset", where, optional=True) or task
    return _record(rid if rid is not None else _line(where), _check_prompt(traj, where, "trajectory"),
                   _field(row, "chosen", where), _field(row, "rejected", where), dataset, task, where)


def _fc(row: dict, name: str, where: str, kind=str, optional: bool = False):
    """Feedback/Preference-Collection field `orig_<name>`, or `<name>` in files without the prefix."""
    return _field(row, _fc_name(row, name), where, kind, optional)


def _fc_name(row: dict, name: str) -> str:
    return f"orig_{name}" if any(k.startswith("orig_") for k in row) else name


def _rubric(row: dict, where: str) -> str:
    return rubrics.rubric(_fc(row, "criteria", where),
                          [_fc(row, f"score{i}_description", where) for i in range(1, 6)])


def _feedback_collection(row: dict, where: str, path: str) -> dict:
    score = _fc(row, "score", where, (int, str))
    field = _fc_name(row, "score")
    if isinstance(score, str) and score.strip().isdigit():
        score = int(score.strip())
    if not isinstance(score, int) or not 1 <= score <= 5:
        raise DataError(f"{where}: field {field!r} must be an integer score 1-5, got {score!r}")
    rid = _field(row, "id", where, (str, int), optional=True)
    return {"id": str(rid if rid is not None else _line(where)),
            "prompt": [{"role": "user", "content": _fc(row, "instruction", where)}],
            "response": _fc(row, "response", where), "reference": _fc(row, "reference_answer", where, optional=True),
            "rubric": _rubric(row, where), "score": score, "feedback": _fc(row, "feedback", where, optional=True),
            "subset": "feedback-collection", "category": "feedback-collection", "source": where}


def _preference_collection(row: dict, where: str, path: str) -> dict:
    preference = _fc(row, "preference", where)
    if preference not in ("A", "B"):
        raise DataError(f"{where}: field {_fc_name(row, 'preference')!r} must be 'A' or 'B', got {preference!r}")
    a, b = _fc(row, "response_A", where), _fc(row, "response_B", where)
    chosen, rejected = (a, b) if preference == "A" else (b, a)
    rid = _field(row, "id", where, (str, int), optional=True)
    rec = _record(rid if rid is not None else _line(where), [{"role": "user", "content": _fc(row, "instruction", where)}],
                  chosen, rejected, "preference-collection", "preference-collection", where)
    rec.update(rubric=_rubric(row, where), reference=_fc(row, "reference_answer", where, optional=True),
               feedback=_fc(row, "feedback", where, optional=True))
    return rec


_ADAPTERS: dict[str, Callable[[dict, str, str], dict]] = {
    "preference-collection": _preference_collection,
    "feedback-collection": _feedback_collection,
    "rewardbench": _rewardbench,
    "hh-rlhf": _hh_rlhf,
    "ultrafeedback": _ultrafeedback,
    "ultrainteract": _ultrainteract,
    "jsonl": _generic,
}
