"""Batch sampling to JSONL: many prompts x n samples, resumable.

Prompts are sorted by length and sent to the engine a batch at a time; each finished prompt is appended to
the output file as one JSON line, so a killed job rerun with the same arguments skips every prompt already
written and redoes only the rest.

    python -m genrm_jax.generate --input prompts.jsonl --output samples.jsonl --n 8 --top-p 0.95

Input lines: {"id": str, and one of "prompt_ids": [int], "messages": [{"role", "content"}], "prompt": [turns]}.
Output lines: {"id": str, "completions": [{"text", "token_ids", "logprobs", "finish_reason"}, ...]}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Iterable

from genrm_jax.sampling import Engine, SamplingParams


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
            from genrm_jax.tokenizer import chat_ids

            return chat_ids(tokenizer, turns)
    raise InputError(f"{where}: expected one of the fields 'prompt_ids', 'messages', 'prompt'")


def finished_ids(path: str) -> set[str]:
    """Ids already written to `path`. A last line cut short by a killed job is removed from the file."""
    if not os.path.exists(path):
        return set()
    done: set[str] = set()
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # an unfinished last line: drop it so the resumed job rewrites that prompt
            f.truncate(end)
    for n, line in enumerate(data[:end].splitlines(), 1):
        if line.strip():
            try:
                done.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{n}: not a result line of this runner ({e})") from None
    return done


def run(engine: Engine, records: Iterable[dict], sp: SamplingParams, output: str, *,
        rows_per_batch: int | None = None, progress: bool = True, source: str = "<records>") -> int:
    """Samples every record not yet in `output` and appends the results; returns how many it sampled.

    `rows_per_batch` (default: the engine's max_batch) bounds prompts x n per engine call, which is also
    how often results reach the file.
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
    todo.sort(key=lambda item: len(item[1]))  # similar lengths share a shape bucket and waste less padding
    per_call = max(1, (rows_per_batch or engine.max_batch) // sp.n)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="prompts", unit="prompt")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "a", encoding="utf-8") as f:
        for k in range(0, len(todo), per_call):
            chunk = todo[k:k + per_call]
            results = engine.generate([ids for _, ids in chunk], sp)
            for (rid, _), completions in zip(chunk, results):
                line = {"id": rid, "completions": [dataclasses.asdict(c) for c in completions]}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return len(todo)


def read_jsonl(path: str) -> list[dict]:
    from genrm_jax.data import sources

    try:
        return [row for _, row in sources.iter_rows(path)]
    except sources.DataError as e:
        raise InputError(str(e)) from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Sample completions for a JSONL file of prompts (resumable).")
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
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--cache-dtype", default="float32", choices=("float32", "bfloat16"))
    args = ap.parse_args(argv)

    from genrm_jax.io import load_model

    model = load_model(args.model) if args.model else load_model()
    engine = Engine(model, cache_dtype=args.cache_dtype, max_batch=args.max_batch)
    sp = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        max_new_tokens=args.max_new_tokens, n=args.n, stop_strings=tuple(args.stop), seed=args.seed)
    made = run(engine, read_jsonl(args.input), sp, args.output, source=args.input)
    print(f"sampled {made} prompts into {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
