"""Judgments for the STaR loop: N per pair, half in each answer order, appended to JSONL one line per pair.

Each line: {"id": pair key, "conversation" (as the judge saw it: cut from the left to its prompt budget),
"chosen", "rejected" (answers as shown, cut to the judge's max_answer_tokens), "subset", "hinted", "skipped" (reason or null), "truncated", "judgments": [{"order",
"chosen_first", "sample", "text" (rationale and verdict), "p_chosen", "verdict" ("chosen" | "rejected" | null),
"correct"}]}. Order 0 shows the chosen answer as A, order 1 as B. A rerun skips the pairs already written and,
sampling being independent of the batch, writes the same judgments an uninterrupted run would.
"""
from __future__ import annotations

import os

import numpy as np

from genrm_jax import runs
from genrm_jax.data import splits
from genrm_jax.judge import api, prompts


def pair_key(record: dict) -> str:
    return splits._key(record)


def sample(judge: api.Judge, records: list[dict], path: str, *, hinted: bool = False, chunk: int = 8,
           progress: bool = True) -> list[dict]:
    """The judgment lines of every record (read back from `path` or sampled and appended). `judge` must be a
    cot judge with position "both"; with `hinted`, it sees the Rationalizer prompt naming the chosen answer."""
    cfg = judge.config
    if cfg.method != "cot" or cfg.position != "both":
        raise ValueError("STaR sampling needs a cot judge with position='both' (each pair in both orders)")
    done = runs.read_resumable(path)
    todo = [r for r in records if pair_key(r) not in done]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="judgments", unit="pair")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            chosen = [r["chosen"] for r in part]
            rejected = [r["rejected"] for r in part]
            j = judge.compare([r["prompt"] for r in part], chosen, rejected,
                              hints=["A"] * len(part) if hinted else None)  # caller's A = the chosen answer
            for i, r in enumerate(part):
                line = _line(judge, r, j, i, hinted)
                if runs.is_main_process():
                    runs.append_jsonl(f, line)
                done[line["id"]] = line
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()
    return [done[pair_key(r)] for r in records]


def _line(judge, r: dict, j: api.Judgment, i: int, hinted: bool) -> dict:
    tok, cfg = judge.model.tokenizer, judge.config
    chosen = prompts.truncate(tok, r["chosen"], cfg.max_answer_tokens)
    rejected = prompts.truncate(tok, r["rejected"], cfg.max_answer_tokens)
    # the conversation as the judge saw it (cut from the left to its budget): training records rebuilt from it
    # are the judge's own prompts, instructions included
    conversation = judge.fitted_conversation(r["prompt"], chosen, rejected, builder=prompts.judge) or r["prompt"]
    out = {"id": pair_key(r), "conversation": conversation, "chosen": chosen, "rejected": rejected,
           "subset": r.get("subset", ""), "hinted": hinted, "skipped": j.skipped.get(i),
           "truncated": bool(j.truncated[i]) if len(j.truncated) else False, "judgments": []}
    if i in j.skipped:
        return out
    k = cfg.k
    for o in range(j.votes.shape[1]):
        for s in range(k):
            vote = int(j.votes[i, o, s])
            p = j.sample_p_a[i, o, s]
            out["judgments"].append({
                "order": o, "chosen_first": not bool(j.swapped[i, o]), "sample": s,
                "text": j.rationales[i][o * k + s],
                "p_chosen": None if np.isnan(p) else float(p),
                "verdict": None if vote == api.INVALID else ("chosen" if vote == api.VOTE_A else "rejected"),
                "correct": vote == api.VOTE_A})
    return out


def summary(lines: list[dict]) -> dict:
    """Counts for the iteration report: pairs, pairs with at least one correct judgment, judgments, correct and
    invalid rates, and skipped pairs."""
    judgments = [x for line in lines for x in line["judgments"]]
    return {
        "pairs": len(lines),
        "pairs_with_correct": sum(any(x["correct"] for x in line["judgments"]) for line in lines),
        "pairs_with_correct_and_incorrect": sum(
            any(x["correct"] for x in line["judgments"]) and any(not x["correct"] for x in line["judgments"])
            for line in lines),
        "skipped_pairs": sum(line["skipped"] is not None for line in lines),
        "judgments": len(judgments),
        "correct_rate": float(np.mean([x["correct"] for x in judgments])) if judgments else None,
        "invalid_rate": float(np.mean([x["verdict"] is None for x in judgments])) if judgments else None,
    }
