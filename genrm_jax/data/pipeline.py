"""Training records -> chat-template token ids and loss masks -> length-bucketed batches, with grain.

Record kinds (see losses.KINDS):
  sft         {"messages": [...], "target": str}: template with generation prompt, then target + EOS;
              the loss mask covers the target tokens (EOS too when `train_eos`).
  dpo / ipo   {"messages": [...], "chosen": str, "rejected": str}: two completions of one prompt; a `packed`
              pipeline batches each pair as one row [prompt | chosen | rejected] (`collate`), so the prompt is
              computed once.
  bt          {"prompt": [...], "chosen": str, "rejected": str}: conversation + each answer as the
              assistant turn; the reward head reads the final EOS.
  pairrm      same record as bt: one sequence with both answers, presented in both orders (labels 1, 0).

Records whose answers break the rule of `sources.answer_problem` (an empty or whitespace answer, or two
identical answers) are skipped as "empty_<field>" / "identical_answers". Too-long examples lose tokens from the
left of the conversation prefix only, never from an answer, the target or the verdict; when an answer cannot fit
even with a one-token prefix the example is skipped. Both are counted in `Pipeline.stats`. The batch order is a
pure function of (seed, epoch), laid out as a grain MapDataset over the whole run, so the iterator's state is a
single index that checkpoints exactly.

Multi-host: every process plans the same global batches and collates only its own rows of each (`rows`, from
sharding.process_rows), so all processes step through the same length buckets in lockstep and together hold each
global batch exactly once; train.train assembles the pieces into one global array.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Iterable, Sequence

import grain
import numpy as np

from genrm_jax.data import sources
from genrm_jax.tokenizer import chat_ids, fit_prefix  # noqa: F401 (fit_prefix: the training rule, used here)

log = logging.getLogger(__name__)

REQUIRED_FIELDS = {
    "sft": ("messages", "target"),
    "dpo": ("messages", "chosen", "rejected"),
    "ipo": ("messages", "chosen", "rejected"),
    "bt": ("prompt", "chosen", "rejected"),
    "pairrm": ("prompt", "chosen", "rejected"),
}
_ROLES = ("user", "assistant", "system")
PAIRRM_TEMPLATE = "[Answer A]\n{a}\n\n[Answer B]\n{b}"


class DataError(ValueError):
    """Bad training input; the message names the file and line (or record index) and the field."""


# --------------------------------------------------------------------------------------------- reading


def read_jsonl(path: str, *, limit: int | None = None) -> list[dict]:
    """Training records from a JSON-lines file (.gz ok); each gets `source` = "path:line" for error messages."""
    out = []
    try:
        for where, rec in sources.iter_rows(path):
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            rec.setdefault("source", where)
            out.append(rec)
            if limit is not None and len(out) >= limit:
                break
    except sources.DataError as e:
        raise DataError(str(e)) from None
    return out


def _where(rec: dict, index: int) -> str:
    return str(rec.get("source") or f"record {index}")


def validate(rec, kind: str, index: int = 0) -> None:
    """Raises DataError naming location and field when `rec` is not a well-formed `kind` record."""
    if kind not in REQUIRED_FIELDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {tuple(REQUIRED_FIELDS)}")
    if not isinstance(rec, dict):
        raise DataError(f"record {index}: expected a dict, got {type(rec).__name__}")
    where = _where(rec, index)
    for field in REQUIRED_FIELDS[kind]:
        if field not in rec:
            raise DataError(f"{where}: missing required field {field!r} for a {kind} record "
                            f"(fields present: {sorted(rec)})")
    conv_field = REQUIRED_FIELDS[kind][0]
    conv = rec[conv_field]
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: field {conv_field!r}: expected a non-empty list of chat turns, "
                        f"got {type(conv).__name__}")
    for t, turn in enumerate(conv):
        if not (isinstance(turn, dict) and turn.get("role") in _ROLES and isinstance(turn.get("content"), str)):
            raise DataError(f"{where}: field {conv_field!r}[{t}]: expected {{'role': one of {_ROLES}, "
                            f"'content': str}}, got {turn!r:.120}")
    for field in REQUIRED_FIELDS[kind][1:]:
        if not isinstance(rec[field], str):
            raise DataError(f"{where}: field {field!r}: expected a string, got {type(rec[field]).__name__}")


# -------------------------------------------------------------------------------------------- encoding


@dataclasses.dataclass
class Stats:
    records: int = 0
    examples: int = 0
    truncated: int = 0  # prefix cut from the left
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # reason -> count
    skipped_where: list = dataclasses.field(default_factory=list)  # first few (location, reason)

    def skip(self, where: str, reason: str):
        self.skipped[reason] += 1
        if len(self.skipped_where) < 20:
            self.skipped_where.append((where, reason))

    def as_dict(self) -> dict:
        return {"records": self.records, "examples": self.examples, "truncated": self.truncated,
                "skipped": dict(self.skipped), "first_skipped": [f"{w}: {r}" for w, r in self.skipped_where]}

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in sorted(self.skipped.items())) or "none"
        return (f"{self.examples} of {self.records} records kept; {self.truncated} with the conversation prefix "
                f"cut from the left; skipped: {skipped}")


def _encode_text(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def encode_record(rec: dict, kind: str, tokenizer, max_len: int, *, train_eos: bool = False,
                  index: int = 0, stats: Stats | None = None):
    """One validated record -> {"tokens": [seq, ...], "loss_mask": [seq, ...], "prefix_len", ...} of int32
    arrays, or None.

    Several sequences per example for the pair kinds (chosen, rejected) or (A-B, B-A) for PairRM, each starting
    with the same `prefix_len` conversation tokens.
    """
    stats = stats if stats is not None else Stats()
    validate(rec, kind, index)
    where = _where(rec, index)
    eos = tokenizer.eos_token_id
    conv = rec[REQUIRED_FIELDS[kind][0]]
    answers = [rec["target"]] if kind == "sft" else [rec["chosen"], rec["rejected"]]
    # The rule sources applies when reading pairs (a guard for records made some other way): an empty or
    # whitespace answer, or two identical answers, teaches nothing.
    problem = sources.answer_problem(dict(zip(REQUIRED_FIELDS[kind][1:], answers)))
    if problem:
        stats.skip(where, problem[0])
        return None
    if kind == "pairrm":
        texts = [PAIRRM_TEMPLATE.format(a=rec["chosen"], b=rec["rejected"]),
                 PAIRRM_TEMPLATE.format(a=rec["rejected"], b=rec["chosen"])]
    else:
        texts = answers
    completions = [_encode_text(tokenizer, t) + [eos] for t in texts]
    prefix, truncated = fit_prefix(chat_ids(tokenizer, conv, add_generation_prompt=True),
                                   [len(c) for c in completions], max_len)
    if prefix is None:
        stats.skip(where, "too_long")
        return None
    stats.truncated += truncated
    tokens, masks = [], []
    for c in completions:
        tokens.append(np.asarray(prefix + c, np.int32))
        m = np.zeros(len(prefix) + len(c), np.int32)
        m[len(prefix):len(prefix) + len(c) - (0 if train_eos else 1)] = 1
        masks.append(m)
    ex = {"tokens": tokens, "loss_mask": masks, "length": max(len(t) for t in tokens), "prefix_len": len(prefix)}
    if rec.get("group") is not None:
        ex["group"] = str(rec["group"])
    if kind == "pairrm":
        ex["labels"] = np.asarray([1, 0], np.int32)
    return ex


def encode_records(records: Iterable[dict], kind: str, tokenizer, max_len: int, *, train_eos: bool = False,
                   progress: bool = True):
    """All records -> (examples, Stats). Missing fields raise; empty or identical answers and misfits are skipped
    and counted."""
    from tqdm.auto import tqdm

    stats = Stats()
    examples = []
    total = len(records) if hasattr(records, "__len__") else None
    for i, rec in enumerate(tqdm(records, total=total, desc=f"tokenize {kind}", disable=not progress)):
        stats.records += 1
        ex = encode_record(rec, kind, tokenizer, max_len, train_eos=train_eos, index=i, stats=stats)
        if ex is not None:
            examples.append(ex)
    stats.examples = len(examples)
    return examples, stats


# -------------------------------------------------------------------------------------------- batching


def default_buckets(max_len: int) -> tuple[int, ...]:
    return tuple(sorted({b for b in (max_len // 4, max_len // 2, max_len) if b >= 8} | {max_len}))


PACKED_KINDS = ("dpo", "ipo")


def packed_buckets(max_len: int) -> tuple[int, ...]:
    """The buckets a packed pair adds: prompt + both completions reach up to 2 * max_len - 1 tokens."""
    return (3 * max_len // 2, 2 * max_len)


def packed_length(ex: dict) -> int:
    """Tokens of a pair example packed as [prompt | chosen | rejected]."""
    return sum(len(t) for t in ex["tokens"]) - ex["prefix_len"]


def epoch_plan(buckets_of: np.ndarray, batch_size: int, seed: int, epoch: int, *, drop_remainder: bool = True,
               groups: np.ndarray | None = None):
    """[(bucket_length, example indices)] for one epoch: shuffled within each bucket, batches shuffled.

    `groups` (an id per example, all of a group in one bucket): a group's examples stay adjacent, so a group no
    larger than the batch and aligned with it shares a batch. A pure function of (seed, epoch): every epoch
    reshuffles, and any step's batch can be recomputed.
    """
    rng = np.random.default_rng([seed, epoch])
    batches = []
    for b in np.unique(buckets_of):
        idx = np.flatnonzero(buckets_of == b)
        if groups is None:
            rng.shuffle(idx)
        else:
            ids = np.unique(groups[idx])
            rng.shuffle(ids)
            rank = np.empty(groups.max() + 1, np.int64)
            rank[ids] = np.arange(len(ids))
            idx = idx[np.argsort(rank[groups[idx]], kind="stable")]
        stop = len(idx) - len(idx) % batch_size if drop_remainder else len(idx)
        batches += [(int(b), idx[i:i + batch_size]) for i in range(0, stop, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(examples: Sequence[dict], length: int, pad_id: int, batch_size: int | None = None, *,
            real: int | None = None, packed: bool = False, scored: int = 0) -> dict:
    """Right-padded arrays: single sequences -> [B, L]; pairs -> [B, 2, L] (leading axis = examples); `packed`
    pairs -> one row each (`_pack`).

    Packed pairs, and single sequences with `scored` > 0, also hold the positions of each row's scored tokens:
    `score_index` [B, K] (padded with 0), `score_weight` [B, K] (1 for a scored token) and, packed, `score_side`
    [B, K] (1 for a rejected token), so that losses run the LM head on those positions only
    (losses.scored_logprobs). K = `scored` must hold every row's scored tokens (`scored_width`, the default for
    packed pairs).

    With `batch_size` larger than len(examples), the batch is filled to that size with copies of its first
    example that count for nothing: `valid` [B] is 0 for them (pair losses weight by it) and their loss mask
    is 0 (SFT weights by target tokens). Every batch of a run then has one shape per length bucket.
    `real`: how many of `examples` count (default all; 0 for a stand-in batch of a process that has no rows).
    """
    real = len(examples) if real is None else real
    if batch_size is not None and batch_size > len(examples):
        examples = list(examples) + [examples[0]] * (batch_size - len(examples))
    if packed:
        out = _pack(examples, length, pad_id)
        out["loss_mask"][real:] = 0
        out["valid"] = (np.arange(len(examples)) < real).astype(np.float32)
        out.update(_score_positions(out["loss_mask"].max(axis=1), scored or scored_width(examples, packed=True),
                                    side=out["loss_mask"][:, 1]))
        return _extras(out, examples)
    n_seq = len(examples[0]["tokens"])
    shape = (len(examples), n_seq, length)
    tokens = np.full(shape, pad_id, np.int32)
    mask = np.zeros(shape, np.int32)
    loss_mask = np.zeros(shape, np.int32)
    for i, ex in enumerate(examples):
        for j, (t, m) in enumerate(zip(ex["tokens"], ex["loss_mask"])):
            tokens[i, j, :len(t)] = t
            mask[i, j, :len(t)] = 1
            loss_mask[i, j, :len(t)] = m
    loss_mask[real:] = 0
    out = {"tokens": tokens, "mask": mask, "loss_mask": loss_mask,
           "valid": (np.arange(len(examples)) < real).astype(np.float32)}
    if n_seq == 1:
        out = {k: (v[:, 0] if k != "valid" else v) for k, v in out.items()}
        if scored:
            out.update(_score_positions(out["loss_mask"], scored))
    return _extras(out, examples)


def scored_count(ex: dict, packed: bool = False) -> int:
    """How many tokens of an encoded example a loss scores (in its packed row, for a packed pair)."""
    if packed:
        return int(ex["loss_mask"][0].sum() + ex["loss_mask"][1][ex["prefix_len"]:].sum())
    return int(sum(m.sum() for m in ex["loss_mask"]))


def scored_width(examples: Sequence[dict], packed: bool = False, multiple: int = 8) -> int:
    """The `scored` of `collate` for these examples: the most scored tokens of any, rounded up to `multiple`
    (the width is a traced shape: a few more columns keep it, and the compiled step, the same across data sets
    of similar judgments)."""
    most = max((scored_count(ex, packed) for ex in examples), default=1)
    return -(-max(most, 1) // multiple) * multiple


def _score_positions(loss_mask: np.ndarray, width: int, side: np.ndarray | None = None) -> dict:
    """[B, L] 0/1 -> `score_index`, `score_weight` (and `score_side` from the [B, L] `side`) of width `width`."""
    b = loss_mask.shape[0]
    index, weight = np.zeros((b, width), np.int32), np.zeros((b, width), np.float32)
    sides = np.zeros((b, width), np.int32)
    for i in range(b):
        at = np.flatnonzero(loss_mask[i])
        if len(at) > width:
            raise ValueError(f"row {i} scores {len(at)} tokens, more than the batch's width {width}")
        index[i, :len(at)], weight[i, :len(at)] = at, 1.0
        if side is not None:
            sides[i, :len(at)] = side[i, at]
    return {"score_index": index, "score_weight": weight, **({"score_side": sides} if side is not None else {})}


def _extras(out: dict, examples: Sequence[dict]) -> dict:
    if "labels" in examples[0]:
        out["labels"] = np.stack([ex["labels"] for ex in examples])
    if "ref_logps" in examples[0]:
        out["ref_logps"] = np.stack([ex["ref_logps"] for ex in examples]).astype(np.float32)
    return out


def _pack(examples: Sequence[dict], length: int, pad_id: int) -> dict:
    """Pairs -> one right-padded row each, [prompt | chosen | rejected], all [B, L] int32 but `loss_mask`:
    `segment_ids` 1, 2, 3 (0 = padding) for attention.shared_prefix_mask; `positions` continuing the prompt in
    each completion; `src`, the position whose logits predict each token (the previous one, but the prompt's
    last for the first rejected token); `loss_mask` [B, 2, L], the chosen and the rejected tokens scored."""
    b = len(examples)
    tokens = np.full((b, length), pad_id, np.int32)
    segment_ids, positions, src = (np.zeros((b, length), np.int32) for _ in range(3))
    loss_mask = np.zeros((b, 2, length), np.int32)
    for i, ex in enumerate(examples):
        p = ex["prefix_len"]
        (c, r), (mc, mr) = ex["tokens"], ex["loss_mask"]
        n = len(c) + len(r) - p
        tokens[i, :n] = np.concatenate([c, r[p:]])
        segment_ids[i, :n] = np.repeat([1, 2, 3], [p, len(c) - p, len(r) - p])
        positions[i, :n] = np.concatenate([np.arange(len(c)), np.arange(p, len(r))])
        src[i, 1:n] = np.arange(n - 1)
        src[i, len(c)] = p - 1
        loss_mask[i, 0, :len(c)] = mc
        loss_mask[i, 1, len(c):n] = mr[p:]
    return {"tokens": tokens, "mask": (segment_ids > 0).astype(np.int32), "segment_ids": segment_ids,
            "positions": positions, "src": src, "loss_mask": loss_mask}


class _Collate(grain.transforms.Map):
    def __init__(self, examples, pad_id, rows, packed, scored):
        self._examples, self._pad_id, self._rows, self._packed = examples, pad_id, rows, packed
        self._scored = scored

    def map(self, entry):
        length, idx = entry
        start, stop = self._rows
        mine = list(idx[start:stop])  # the last batch of a bucket may have no row for this process
        picked = [self._examples[i] for i in (mine or idx[:1])]
        return collate(picked, length, self._pad_id, stop - start, real=len(mine), packed=self._packed,
                       scored=self._scored)


class Pipeline:
    """Encoded examples of one kind, batched by length bucket over `epochs` seeded epochs.

    `iterator()` is a grain DatasetIterator whose `get_state()` the checkpointer saves; `len(self)` is the number
    of optimiser steps the plan holds. `rows` (start, stop): the rows of every batch this process loads (all).
    `packed` (dpo / ipo): each pair is one row [prompt | chosen | rejected] (`collate`), which may reach 2 *
    max_len tokens: `packed_buckets` extend the buckets (whose largest is still max_len, the truncation rule's).
    """

    def __init__(self, records: Iterable[dict], kind: str, tokenizer, *, max_len: int, batch_size: int,
                 buckets: Sequence[int] | None = None, seed: int = 0, epochs: int = 1, train_eos: bool = False,
                 drop_remainder: bool = True, progress: bool = True, rows: tuple[int, int] | None = None,
                 packed: bool = False):
        if packed and kind not in PACKED_KINDS:
            raise ValueError(f"packed batches are for {PACKED_KINDS} records, not {kind!r}")
        self.kind, self.batch_size, self.seed, self.epochs, self.packed = kind, batch_size, seed, epochs, packed
        self.rows = tuple(rows) if rows is not None else (0, batch_size)
        if not 0 <= self.rows[0] < self.rows[1] <= batch_size:
            raise ValueError(f"rows {self.rows} of a batch of {batch_size}: expected 0 <= start < stop <= batch_size")
        self.buckets = tuple(sorted(buckets)) if buckets else default_buckets(max_len)
        if self.buckets[-1] != max_len:
            raise ValueError(f"largest bucket {self.buckets[-1]} must equal max_len {max_len}")
        if packed:
            self.buckets = tuple(sorted(set(self.buckets) | set(packed_buckets(max_len))))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.examples, self.stats = encode_records(records, kind, tokenizer, max_len, train_eos=train_eos,
                                                   progress=progress)
        log.info("%s data: %s", kind, self.stats.summary())
        if not self.examples:
            raise DataError(f"no usable {kind} examples: {self.stats.summary()}")
        lengths = np.asarray([packed_length(ex) if packed else ex["length"] for ex in self.examples])
        self.bucket_of = np.asarray(self.buckets)[np.searchsorted(self.buckets, lengths)]
        groups = None
        if any("group" in ex for ex in self.examples):  # records naming a group are batched together
            names = [ex.get("group", f"\0{i}") for i, ex in enumerate(self.examples)]
            groups = np.unique(names, return_inverse=True)[1]
            longest = np.zeros(groups.max() + 1, self.bucket_of.dtype)
            np.maximum.at(longest, groups, self.bucket_of)
            self.bucket_of = longest[groups]  # a group pads to its longest member's bucket
        self.plan = [b for e in range(epochs)
                     for b in epoch_plan(self.bucket_of, batch_size, seed, e, drop_remainder=drop_remainder,
                                         groups=groups)]
        if not self.plan:
            raise DataError(f"{len(self.examples)} {kind} examples make no full batch of {batch_size} "
                            f"in any length bucket {self.buckets}")
        # SFT and packed pairs carry their scored positions: the LM head runs on those only (losses.py)
        self.scored = scored_width(self.examples, packed) if kind == "sft" or packed else 0
        self.dataset = grain.MapDataset.source(self.plan).map(
            _Collate(self.examples, self.pad_id, self.rows, packed, self.scored))

    def __len__(self) -> int:
        return len(self.plan)

    def iterator(self):
        return iter(self.dataset)

    def sequential_batches(self, batch_size: int | None = None):
        """Every example once, in order, bucket-padded; the last batch is filled with copies of its first
        example and says how many rows are real in `n_valid` (for reference log-probs and evaluation)."""
        bs = batch_size or self.batch_size
        for start in range(0, len(self.examples), bs):
            chunk = self.examples[start:start + bs]
            length = int(self.bucket_of[start:start + len(chunk)].max())
            batch = collate(chunk, length, self.pad_id, bs, packed=self.packed, scored=self.scored)
            batch["n_valid"] = len(chunk)
            yield batch

    def attach_reference(self, ref_logps: np.ndarray):
        """Stores the frozen reference's [N, 2] summed log-probs (losses.reference_logprobs) in the examples."""
        ref_logps = np.asarray(ref_logps, np.float32)
        if ref_logps.shape != (len(self.examples), 2):
            raise ValueError(f"reference log-probs of shape {ref_logps.shape}; expected ({len(self.examples)}, 2)")
        for ex, r in zip(self.examples, ref_logps):
            ex["ref_logps"] = r
