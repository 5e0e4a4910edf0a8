"""Batch sampling to JSONL: many prompts x n samples, resumable.

Prompts are sorted by length and sent to the engine a batch at a time; each prompt is appended to the output
file as one JSON line as soon as its batch finishes, so a killed job loses at most the batch in progress
(`--max-batch` rows), and rerun with the same arguments it skips every prompt already written and redoes only
the rest, drawing the same samples an uninterrupted run would (samples do not depend on the batch).

    python -m genrm_jax.generate --input prompts.jsonl --output samples.jsonl --n 8 --top-p 0.95

Input lines: {"id": str, and one of "prompt_ids": [int], "messages": [{"role", "content"}], "prompt": [turns]}.
Output lines: {"id": str, "completions": [{"text", "token_ids", "logprobs", "finish_reason"}, ...]}.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Iterable

from genrm_jax import runtime
from genrm_jax.data import sources
from genrm_jax.io import load_model
from genrm_jax.runs import append_jsonl, read_resumable
from genrm_jax.sampling import Engine, SamplingParams
from genrm_jax.tokenizer import chat_ids


class InputError(ValueError):
    pass


def prompt_ids(record: dict, tokenizer, where: str) -> list[int]:
    """Token ids of one input record: given directly, or rendered through the chat template."""
    if "prompt_ids" in record:
        ids = record["prompt_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise InputError(f"{where}: field 'prompt_ids' must be a non-empty list of ints")
        return ids
    for field in ("messages", "prompt"):
        if field in record:
            turns = record[field]
            if not isinstance(turns, list) or not all(isinstance(t, dict) and "role" in t and "content" in t
                                                      for t in turns):
                raise InputError(f"{where}: field {field!r} must be a list of {{'role', 'content'}} turns")

            return chat_ids(tokenizer, turns)
    raise InputError(f"{where}: expected one of the fields 'prompt_ids', 'messages', 'prompt'")


def finished_ids(path: str) -> set[str]:
    """Ids already written to `path`. A last line cut short by a killed job is removed from the file."""
    try:
        return set(read_resumable(path))
    except ValueError as e:
        raise InputError(str(e)) from None


def run(engine: Engine, records: Iterable[dict], sp: SamplingParams, output: str, *,
        progress: bool = True, source: str = "<records>") -> int:
    """Samples every record not yet in `output` and appends the results; returns how many it sampled.

    Each prompt's line is written and flushed as soon as the engine batch that finishes it returns, so a
    kill loses at most the batch in progress (`engine.max_batch` rows).
    """
    records = list(records)
    seen: set[str] = set()
    for n, r in enumerate(records, 1):
        rid = r.get("id") if isinstance(r, dict) else None
        if not isinstance(rid, str) or not rid:
            raise InputError(f"{source}:{n}: field 'id' must be a non-empty string")
        if rid in seen:
            raise InputError(f"{source}:{n}: duplicate id {rid!r}")
        seen.add(rid)
    done = finished_ids(output)
    todo = [(r["id"], prompt_ids(r, engine.tokenizer, f"{source}:{n}"))
            for n, r in enumerate(records, 1) if r["id"] not in done]
    context = engine.config.max_position_embeddings
    lines = {r["id"]: n for n, r in enumerate(records, 1)}
    for rid, ids in todo:
        if len(ids) + sp.max_new_tokens > context:
            raise InputError(f"{source}:{lines[rid]}: prompt of {len(ids)} tokens + max_new_tokens="
                             f"{sp.max_new_tokens} exceeds the model's context of {context}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="prompts", unit="prompt")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "a", encoding="utf-8") as f:
        def write(i, completions):
            append_jsonl(f, {"id": todo[i][0], "completions": [dataclasses.asdict(c) for c in completions]})
            if bar is not None:
                bar.update(1)

        engine.generate([ids for _, ids in todo], sp, on_prompt=write)
    if bar is not None:
        bar.close()
    return len(todo)


def read_jsonl(path: str) -> list[dict]:
    try:
        return [row for _, row in sources.iter_rows(path)]
    except sources.DataError as e:
        raise InputError(str(e)) from None


def main(argv=None) -> int:
    runtime.apply()  # an entry point: the CPU allocator and dispatch settings (genrm_jax/runtime.py)
    ap = argparse.ArgumentParser(
        description="Sample completions for a JSONL file of prompts (resumable).",
        epilog="Results are appended per finished engine batch: a kill loses at most the batch in progress "
               "(--max-batch rows, i.e. max_batch / n prompts); rerunning the same command resumes.")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--model", default=None, help="registered name, GGUF file or Hugging Face directory")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-batch", type=int, default=32, help="rows (prompts x samples) per engine batch")
    ap.add_argument("--cache-dtype", default="float32", choices=("float32", "bfloat16"))
    args = ap.parse_args(argv)


    model = load_model(args.model) if args.model else load_model()
    engine = Engine(model, cache_dtype=args.cache_dtype, max_batch=args.max_batch)
    sp = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        max_new_tokens=args.max_new_tokens, n=args.n, stop_strings=tuple(args.stop), seed=args.seed)
    try:
        made = run(engine, read_jsonl(args.input), sp, args.output, source=args.input)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sampled {made} prompts into {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
