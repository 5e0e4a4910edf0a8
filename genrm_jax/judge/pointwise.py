"""Pointwise judging (Self-Rationalization, Trivedi et al., 2024): a rationale, then a score 1-5 against a rubric.

`PointwiseJudge.score(items)` samples `n` judgments per item with the `pointwise` prompt. An item is a dict
{"conversation", "response", "rubric", "reference" (optional score-5 answer), "hint" (optional: the gold
assessment in words, for Rationalizer-style seed rationales), "judgment" (optional: then the item is a judgment to
rate 1-5 with the `meta_judge` prompt)}. With `verdict="force"` the score is read after the
rationale from the next-token probabilities of "1".."5" (api.forced), so every judgment has a score, a
distribution over the five and an expected score; with "parse" the score is the `[RESULT] n` the judge wrote
(None when it wrote none) and there is no distribution.

`Ranker` turns a pointwise judge into a pairwise one for benchmark.evaluate: the answer with the higher score
wins (with several judgments, the majority score, ties between modes at their mean); equal scores count 0.5
and, having no winner, no vote (so a Ranker's "invalid rate" is its rate of ties and unscored answers).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from genrm_jax import config_util
from genrm_jax.judge import api, prompts, verdicts
from genrm_jax.sampling import Engine, SamplingParams

SCORES = (1, 2, 3, 4, 5)
STYLE = "result"


@dataclasses.dataclass(frozen=True)
class PointwiseConfig:
    n: int = 1                      # judgments per item
    temperature: float = 0.0        # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    verdict: str = "force"          # "force": a score every time; "parse": only the score the judge wrote
    seed: int = 0
    max_answer_tokens: int | None = None
    max_prompt_tokens: int | None = None
    invalid_score: float = 0.5      # Ranker: P(A) of a pair with an unscored answer (a tie)
    prompt: str = "pointwise"       # read by benchmark.evaluate (rubric prompts get one rubric per pair)
    rank_by: str = "score"          # Ranker: the drawn "score" (the paper; equal scores tie) or, forced verdicts
                                    # only, the "expected" score under the score distribution (ties are rare)

    def __post_init__(self):
        if self.verdict not in api.VERDICT_MODES:
            raise api.JudgeConfigError("verdict", f"must be one of {api.VERDICT_MODES}, got {self.verdict!r}")
        for field in ("n", "max_new_tokens"):
            if not isinstance(getattr(self, field), (int, np.integer)) or getattr(self, field) < 1:
                raise api.JudgeConfigError(field, f"must be an integer >= 1, got {getattr(self, field)!r}")
        if self.rank_by not in ("score", "expected") or (self.rank_by == "expected" and self.verdict != "force"):
            raise api.JudgeConfigError("rank_by", f"must be 'score', or 'expected' with verdict 'force', got "
                                                  f"{self.rank_by!r}")
        if not self.temperature >= 0.0 or not 0.0 < self.top_p <= 1.0:
            raise api.JudgeConfigError("temperature", "must be >= 0 with top_p in (0, 1]")

    @classmethod
    def from_config(cls, cfg, where: str = "config.pointwise", **overrides) -> "PointwiseConfig":
        return config_util.from_config(cls, cfg, where, **overrides)


def builder(item: dict):
    """`(conversation, response, _) -> messages` of an item for prompts.fit (which fits pairwise builders): the
    `pointwise` prompt, or the `meta_judge` prompt when the item holds a `judgment` to rate."""
    if item.get("judgment") is not None:
        return lambda conversation, response, _: prompts.meta_judge(conversation, response, item["judgment"],
                                                                    item["rubric"])
    return lambda conversation, response, _: prompts.pointwise(conversation, response, item["rubric"],
                                                               item.get("reference"), item.get("hint"))


class PointwiseJudge:
    """Scores responses 1-5 with a model's `pointwise` prompt; `engine`: genrm_jax.sampling.Engine."""
    def __init__(self, model, config: PointwiseConfig = PointwiseConfig(), *, engine=None):
        self.model, self.config = model, config
        if engine is None:
            engine = Engine(model)
        self.engine = engine
        self._labels = api.verdict_label_tokens(model.tokenizer, STYLE)

    def prompt_budget(self) -> int:
        room = int(self.model.config.max_position_embeddings) - self.config.max_new_tokens - len(self._labels[0]) - 1
        cap = self.config.max_prompt_tokens
        return room if cap is None else min(room, cap)

    def fit(self, item: dict) -> tuple[list[int] | None, list[dict], bool]:
        """(prompt ids or None when the item cannot fit, the conversation as fitted, whether it was cut)."""
        seen = []
        build = builder(item)

        def record(conv, *answers):
            seen.append(conv)
            return build(conv, *answers)

        response = prompts.truncate(self.model.tokenizer, item["response"], self.config.max_answer_tokens)
        f = prompts.fit(self.model.tokenizer, record, item["conversation"], response, "", self.prompt_budget())
        return f.ids, seen[-1], f.truncated

    def score(self, items: Sequence[dict], *, progress: bool = False) -> list[dict]:
        """Per item: {"skipped": reason or None, "truncated", "conversation" (as fitted), "judgments": [{"sample",
        "text" (rationale and score), "score" (1-5 or None), "dist" ([5] or None), "expected" (or None)}]}."""

        cfg = self.config
        fitted = [self.fit(it) for it in items]
        judged = [i for i, (ids, _, _) in enumerate(fitted) if ids is not None]
        stops = (prompts.VERDICT_PREFIX[STYLE].strip(),) if cfg.verdict == "force" else ()
        sp = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            n=cfg.n, seed=cfg.seed, stop_strings=stops)
        ids = [fitted[i][0] for i in judged]
        # forced verdicts are scored from each row's KV cache as its batch ends
        then = {"then": api.forced_continuation(self.model.tokenizer, STYLE, self._labels)} \
            if cfg.verdict == "force" else {}
        outs = self.engine.generate(ids, sp, progress=progress, **then) if ids else []
        results = [{"skipped": None if ids_ is not None else "too long: the rubric, instructions and response leave "
                    "no room for the conversation in the prompt budget", "truncated": bool(cut),
                    "conversation": conv, "judgments": []} for ids_, conv, cut in fitted]
        if cfg.verdict == "force":
            for r, j, rationale, probs, drawn in api.forced(self.engine, self.model.tokenizer, ids, outs, STYLE,
                                                             self._labels, cfg.temperature, cfg.seed):
                score = SCORES[drawn]
                results[judged[r]]["judgments"].append({
                    "sample": j, "text": prompts.with_verdict(rationale, score, STYLE), "score": score,
                    "dist": [float(p) for p in probs], "expected": float(np.dot(probs, SCORES))})
        else:
            for r, completions in enumerate(outs):
                for j, c in enumerate(completions):
                    score = verdicts.parse(c.text, STYLE)
                    results[judged[r]]["judgments"].append({"sample": j, "text": c.text, "score": score,
                                                            "dist": None, "expected": score})
        return results


def consensus(scores: Sequence[int | None]) -> float | None:
    """The majority score of several judgments (ties between modes: their mean); None when none is valid."""
    valid = [s for s in scores if s is not None]
    if not valid:
        return None
    counts = np.bincount(valid, minlength=6)
    modes = np.flatnonzero(counts == counts.max())
    return float(np.mean(modes))


class Ranker:
    """A pairwise judge made of a pointwise one (see the module docstring); `compare` returns api.Judgment."""
    def __init__(self, judge: PointwiseJudge):
        self.judge, self.config = judge, judge.config

    def value(self, judgments: list[dict]) -> float | None:
        """An answer's score from its judgments: the majority score, or the mean expected score."""
        if self.config.rank_by == "expected":
            return float(np.mean([x["expected"] for x in judgments])) if judgments else None
        return consensus([x["score"] for x in judgments])

    def compare(self, conversations, answers_a, answers_b, *, progress: bool = False,
                rubrics: Sequence[str] | None = None) -> api.Judgment:
        n = len(conversations)
        rubrics = list(rubrics) if rubrics is not None else [prompts.DEFAULT_RUBRIC] * n
        items = [{"conversation": c, "response": r, "rubric": rb}
                 for c, a, b, rb in zip(conversations, answers_a, answers_b, rubrics) for r in (a, b)]
        scored = self.judge.score(items, progress=progress)
        p_a = np.full(n, self.config.invalid_score)
        votes = np.full((n, 1, 1), api.INVALID, np.int8)
        rationales, skipped = [], {}
        for i in range(n):
            sa, sb = scored[2 * i], scored[2 * i + 1]
            rationales.append([x["text"] for x in sa["judgments"] + sb["judgments"]])
            if sa["skipped"] or sb["skipped"]:
                skipped[i] = sa["skipped"] or sb["skipped"]
                continue
            a, b = self.value(sa["judgments"]), self.value(sb["judgments"])
            if a is None or b is None or a == b:
                continue  # a tie or an unscored answer: P(A) = invalid_score, no vote
            p_a[i] = 1.0 if a > b else 0.0
            votes[i, 0, 0] = api.VOTE_A if a > b else api.VOTE_B
        truncated = np.array([scored[2 * i]["truncated"] or scored[2 * i + 1]["truncated"] for i in range(n)], bool)
        return api.Judgment(p_a, votes, np.zeros((n, 1), bool), rationales, skipped, truncated)
