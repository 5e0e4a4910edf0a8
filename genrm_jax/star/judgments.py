"""Judgments for the STaR loop: N per pair, half in each answer order, appended to JSONL one line per pair.

Each line: {"id": pair key, "prompt" (the judge prompt's name), "rubric" (pairwise prompt) or null, "conversation" (as the judge saw it: cut from the left to its prompt budget),
"chosen", "rejected" (answers as shown, cut to the judge's max_answer_tokens), "subset", "hinted", "skipped" (reason or null), "truncated", "judgments": [{"order",
"chosen_first", "sample", "text" (rationale and verdict), "p_chosen", "verdict" ("chosen" | "rejected" | null),
"correct"}]}. Order 0 shows the chosen answer as A, order 1 as B. A rerun skips the pairs already written and,
sampling being independent of the batch, writes the same judgments an uninterrupted run would.
"""
from __future__ import annotations

import numpy as np

from genrm_jax import runs
from genrm_jax.data import splits
from genrm_jax.judge import api, prompts


def pair_key(record: dict) -> str:
    return splits._key(record)


def resumable(records: list[dict], path: str, lines_of, *, chunk: int = 8, progress: bool = True,
              desc: str = "judgments", key=pair_key) -> list[dict]:
    """The JSONL lines of every record, whose "id" is `key(record)`: read back from `path`, the rest made
    `chunk` records at a time by `lines_of(records) -> lines` and appended (by the main process) as each chunk
    ends, so a killed run loses at most one chunk."""
    done = runs.read_resumable(path)
    todo = [r for r in records if key(r) not in done]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=desc, unit="input")
    with runs.open_output(path, "a") as f:  # other processes of a multi-host run write nothing
        for start in range(0, len(todo), chunk):
            for line in lines_of(todo[start:start + chunk]):
                runs.append_jsonl(f, line)
                done[line["id"]] = line
            if bar is not None:
                bar.update(len(todo[start:start + chunk]))
    if bar is not None:
        bar.close()
    return [done[key(r)] for r in records]


def sample(judge: api.Judge, records: list[dict], path: str, *, hinted: bool = False, chunk: int = 8,
           progress: bool = True) -> list[dict]:
    """The judgment lines of every record (read back from `path` or sampled and appended). `judge` must be a
    cot judge with position "both"; with `hinted`, it sees the Rationalizer prompt naming the chosen answer
    (with the `pairwise` prompt: that prompt with the label given, and each record's rubric)."""
    cfg = judge.config
    if cfg.method != "cot" or cfg.position != "both":
        raise ValueError("STaR sampling needs a cot judge with position='both' (each pair in both orders)")
    rubric = cfg.prompt == "pairwise"

    def lines_of(part):
        j = judge.compare([r["prompt"] for r in part], [r["chosen"] for r in part], [r["rejected"] for r in part],
                          hints=["A"] * len(part) if hinted else None,  # caller's A = the chosen answer
                          rubrics=[prompts.rubric_for(r) for r in part] if rubric else None)
        return [_line(judge, r, j, i, hinted) for i, r in enumerate(part)]

    return resumable(records, path, lines_of, chunk=chunk, progress=progress)


def _line(judge, r: dict, j: api.Judgment, i: int, hinted: bool) -> dict:
    tok, cfg = judge.model.tokenizer, judge.config
    chosen = prompts.truncate(tok, r["chosen"], cfg.max_answer_tokens)
    rejected = prompts.truncate(tok, r["rejected"], cfg.max_answer_tokens)
    # the conversation as the judge saw it (cut from the left to its budget): training records rebuilt from it
    # are the judge's own prompts, instructions included
    rubric = prompts.rubric_for(r) if cfg.prompt == "pairwise" else None
    conversation = judge.fitted_conversation(r["prompt"], chosen, rejected, builder=judge.builder(rubric)) or r["prompt"]
    out = {"id": pair_key(r), "prompt": cfg.prompt, "rubric": rubric, "conversation": conversation,
           "chosen": chosen, "rejected": rejected,
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


# --------------------------------------------------------------------------- pointwise (Self-Rationalization)
# A pointwise line: {"id", "task": "pointwise", "rubric", "gold" (score 1-5, or null for a preference pair),
# "hinted", "skipped", "truncated", "answers": {name: {"response", "conversation" (as fitted), "reference"}},
# "judgments": [{"answer", "sample", "text", "score", "dist", "expected", "correct"}]}.
# A preference pair gives two answers, "chosen" and "rejected", judged separately under the pair's rubric; sample
# i of one and sample i of the other form a pair of scores, and both judgments are correct when that pair
# orders the answers as the human label does (a strictly higher score for the chosen one). A gold-scored
# record (Feedback-Collection) gives one answer, "response", correct when its score equals the gold score.

PAIR_HINTS = {"chosen": "the better of two responses to this request: a careful human preferred it to an "
                        "alternative response",
              "rejected": "the worse of two responses to this request: a careful human preferred an alternative "
                          "response to it"}


def pointwise_answers(r: dict) -> dict[str, dict]:
    if "score" in r:
        return {"response": {"response": r["response"], "reference": r.get("reference")}}
    return {"chosen": {"response": r["chosen"], "reference": None},
            "rejected": {"response": r["rejected"], "reference": None}}


def sample_pointwise(judge, records: list[dict], path: str, *, hinted: bool = False, chunk: int = 8,
                     progress: bool = True) -> list[dict]:
    """Pointwise judgment lines (see above) of every record, resumable like `sample`; `judge`: a
    judge.pointwise.PointwiseJudge whose `n` is the judgments per answer."""

    def lines_of(part):
        items = []
        for r in part:
            for name, a in pointwise_answers(r).items():
                hint = None
                if hinted:
                    hint = f"deserving a score of {r['score']}" if "score" in r else PAIR_HINTS[name]
                items.append({"conversation": r["prompt"], "response": a["response"], "reference": a["reference"],
                              "rubric": prompts.rubric_for(r), "hint": hint})
        scored = iter(judge.score(items, progress=False))
        return [_pointwise_line(judge, r, {name: next(scored) for name in pointwise_answers(r)}, hinted)
                for r in part]

    return resumable(records, path, lines_of, chunk=chunk, progress=progress, desc="pointwise judgments")


def _pointwise_line(judge, r: dict, scored: dict[str, dict], hinted: bool) -> dict:
    tok, cfg = judge.model.tokenizer, judge.config
    gold = r.get("score")
    skipped = next((s["skipped"] for s in scored.values() if s["skipped"]), None)
    out = {"id": pair_key(r), "task": "pointwise", "rubric": prompts.rubric_for(r), "gold": gold, "hinted": hinted,
           "skipped": skipped, "truncated": any(s["truncated"] for s in scored.values()), "answers": {},
           "judgments": []}
    for name, a in pointwise_answers(r).items():
        out["answers"][name] = {"response": prompts.truncate(tok, a["response"], cfg.max_answer_tokens),
                                "conversation": scored[name]["conversation"], "reference": a["reference"]}
    if skipped:
        return out
    for name, s in scored.items():
        for x in s["judgments"]:
            if gold is not None:
                correct = x["score"] == gold
            else:  # a pair: sample i of the chosen answer against sample i of the rejected one
                mine = x["score"]
                other = scored["rejected" if name == "chosen" else "chosen"]["judgments"][x["sample"]]["score"]
                c, rj = (mine, other) if name == "chosen" else (other, mine)
                correct = c is not None and rj is not None and c > rj
            out["judgments"].append({"answer": name, **x, "correct": bool(correct)})
    return out


def pointwise_summary(lines: list[dict]) -> dict:
    """Counts for the report: inputs, inputs with a correct judgment, judgments, correct rate, unscored rate."""
    judgments = [x for line in lines for x in line["judgments"]]
    return {"inputs": len(lines), "skipped_inputs": sum(bool(line["skipped"]) for line in lines),
            "inputs_with_correct": sum(any(x["correct"] for x in line["judgments"]) for line in lines),
            "judgments": len(judgments),
            "correct_rate": float(np.mean([x["correct"] for x in judgments])) if judgments else None,
            "unscored_rate": float(np.mean([x["score"] is None for x in judgments])) if judgments else None}


def rate(meta_judge, lines: list[dict], path: str, *, chunk: int = 8, progress: bool = True) -> list[dict]:
    """Meta-judge ratings of every judgment of `lines` (pointwise or pairwise), resumable: one line per input,
    {"id", "ratings": [expected 1-5 rating per judgment, in the line's order; null when the prompt did not fit]}.
    `meta_judge`: a PointwiseJudge (it reads the `meta_judge` prompt from each item's `judgment`)."""
    by_id = {line["id"]: line for line in lines}

    def items_of(line):
        for x in line["judgments"]:
            if line.get("task") == "pointwise":
                a = line["answers"][x["answer"]]
                yield {"conversation": a["conversation"], "response": a["response"], "rubric": line["rubric"],
                       "judgment": x["text"]}
            else:
                first, second = ((line["chosen"], line["rejected"]) if x["chosen_first"]
                                 else (line["rejected"], line["chosen"]))
                yield {"conversation": line["conversation"], "rubric": line.get("rubric") or prompts.DEFAULT_RUBRIC,
                       "response": f"Response 1:\n{first}\n\nResponse 2:\n{second}", "judgment": x["text"]}

    def lines_of(part):
        items = [it for r in part for it in items_of(by_id[r["id"]])]
        scored = iter(meta_judge.score(items, progress=False))
        out = []
        for r in part:
            ratings = []
            for _ in by_id[r["id"]]["judgments"]:
                s = next(scored)
                js = s["judgments"]
                ratings.append(None if s["skipped"] or not js else js[0]["expected"])
            out.append({"id": r["id"], "ratings": ratings})
        return out

    return resumable([{"id": line["id"]} for line in lines], path, lines_of, chunk=chunk, progress=progress,
                     desc="meta-judge", key=lambda r: r["id"])
