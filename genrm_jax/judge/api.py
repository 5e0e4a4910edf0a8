"""A judge you can call: P(A better) for a batch of (conversation, answer A, answer B), and an RL reward.

Methods:
- "cot": sample k judgments with the `judge` prompt and vote on their `[[A]]`/`[[B]]` verdicts (LLM-as-judge,
  STaR and CoT-GenRM models). P(A) is the mean vote, an invalid judgment counting `invalid_score`.
- "genrm": one forward pass: P(A) = softmax over the log-probabilities of the verdict tokens "A" and "B" as
  the first token of the reply (Engine.score_next_token), so no sampling and no invalid outputs.
- "bt": sigmoid(r(x, A) - r(x, B)) from a scalar head; "pairrm": sigmoid of the head on one sequence holding
  both answers (averaged over both orders). Their sequences are the training pipeline's, token for token.

Position bias: `position="fixed"` shows the pair as given, "swap" in a seeded random order per pair, "both"
judges both orders and averages. Votes and probabilities are always reported for the caller's A/B labels.

Context: a cot / genrm prompt plus the reply (max_new_tokens; one verdict token for genrm) must fit the model's
context (`max_position_embeddings`). As in training, the conversation is cut from the left to make it fit
(`prompts.fit`; counted in `Judgment.truncated`); a pair whose instructions and answers alone (after
`max_answer_tokens`) leave no room is not judged: it scores `invalid_score` and is listed in
`Judgment.skipped` with the reason. bt / pairrm sequences are fitted to `max_len` by the training pipeline.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Sequence

import numpy as np

from genrm_jax import methods
from genrm_jax.data import pipeline
from genrm_jax.judge import prompts, verdicts
from genrm_jax.models import heads
from genrm_jax.sampling import Continuation, Engine, SamplingParams

METHODS = tuple(methods.JUDGES)  # cot, genrm (a language model judges), bt, pairrm (a reward head)
POSITIONS = ("fixed", "swap", "both")
VERDICT_MODES = ("parse", "force")

# Vote codes in `Judgment.votes` (in the caller's labels).
VOTE_A, VOTE_B, INVALID = 1, 0, -1


class JudgeConfigError(ValueError):
    """A bad JudgeConfig value; `field` names the field and `problem` says what is wrong with it."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    method: str = "cot"
    prompt: str = "judge"          # a key of prompts.PAIRWISE (cot) ; genrm always uses prompts.genrm
    k: int = 1                     # sampled judgments per order (cot)
    temperature: float = 1.0       # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop_strings: tuple[str, ...] = ()  # e.g. ("]]",) ends a judgment at its first verdict (cheaper, but then
                                         # a judge cannot revise its verdict)
    position: str = "fixed"
    verdict: str = "parse"         # cot: "parse" the verdict from the text (the paper), or "force" it: when the
                                   # rationale ends, append the verdict prefix and read P(A) from the next-token
                                   # probabilities of the two labels (a verdict every time; see `_force`); then
                                   # P(A) is the mean of those probabilities, votes the drawn verdicts
    max_prompt_tokens: int | None = None  # cot / genrm: fit prompts to this many tokens (the conversation is
                                          # cut from the left) even when the context allows more
    seed: int = 0
    invalid_score: float = 0.5     # P(A) contribution of a judgment with no verdict (RewardBench scores a tie)
    max_answer_tokens: int | None = None  # cut each answer to this many tokens before prompting
    max_len: int = 4096            # bt / pairrm: longest sequence (the conversation is cut from the left)
    batch_size: int = 8            # bt / pairrm forward batch
    reward_eps: float = 1e-3       # p is clipped to [eps, 1 - eps] before log p/(1-p)

    def __post_init__(self):
        def bad(field, problem):
            raise JudgeConfigError(field, f"{problem}, got {getattr(self, field)!r}")

        if self.method not in METHODS:
            bad("method", f"must be one of {METHODS}")
        if self.position not in POSITIONS:
            bad("position", f"must be one of {POSITIONS}")
        if self.verdict not in VERDICT_MODES:
            bad("verdict", f"must be one of {VERDICT_MODES}")
        if (self.method == "cot" and self.verdict == "force" and self.prompt in prompts.PAIRWISE
                and prompts.VERDICT_STYLE[self.prompt] not in prompts.VERDICT_PREFIX):
            bad("verdict", f"'force' needs a prompt with a verdict prefix "
                           f"({', '.join(p for p, st in prompts.VERDICT_STYLE.items() if st in prompts.VERDICT_PREFIX)})")
        if self.max_prompt_tokens is not None and (not isinstance(self.max_prompt_tokens, (int, np.integer))
                                                   or self.max_prompt_tokens < 1):
            bad("max_prompt_tokens", "must be None (the model's context) or an integer >= 1")
        if self.method == "cot" and self.prompt not in prompts.PAIRWISE:
            bad("prompt", f"must be one of {tuple(prompts.PAIRWISE)}")
        for field in ("k", "max_new_tokens", "batch_size"):
            if not isinstance(getattr(self, field), (int, np.integer)) or getattr(self, field) < 1:
                bad(field, "must be an integer >= 1")
        if self.max_answer_tokens is not None and (not isinstance(self.max_answer_tokens, (int, np.integer))
                                                   or self.max_answer_tokens < 1):
            bad("max_answer_tokens", "must be None (no cut) or an integer >= 1")
        if not self.temperature >= 0.0:
            bad("temperature", "must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "must be in (0, 1]")
        if not 0.0 <= self.invalid_score <= 1.0:
            bad("invalid_score", "must be in [0, 1]")
        if not 0.0 < self.reward_eps < 0.5:
            bad("reward_eps", "must be in (0, 0.5)")
        if isinstance(self.stop_strings, str) or not all(isinstance(x, str) and x for x in self.stop_strings):
            bad("stop_strings", "must be a tuple of non-empty strings")


@dataclasses.dataclass
class Judgment:
    """Results for N pairs, in the caller's A/B labels.

    p_a: [N] P(A better).  votes: [N, orders, k] int8 (1 = A, 0 = B, -1 invalid); "orders" is 2 with
    position="both" (order 1 is the swapped presentation), else 1.  swapped: [N, orders] whether that order
    showed the caller's B first.  rationales: [N][orders * k] judge texts (cot) or [] (other methods).
    skipped: {pair index: reason} for pairs that could not be judged (too long even with the conversation cut
    away, or an empty answer for bt / pairrm): P(A) = invalid_score, every vote invalid, no rationale.
    truncated: [N] bool, whether the pair's conversation was cut from the left to fit the context.
    """
    p_a: np.ndarray
    votes: np.ndarray
    swapped: np.ndarray
    rationales: list[list[str]]
    skipped: dict[int, str] = dataclasses.field(default_factory=dict)
    truncated: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))
    # cot: [N, orders, k] P(caller's A) of each judgment (forced verdicts: from the label probabilities; parsed:
    # 1 / 0, NaN when invalid); None for the other methods
    sample_p_a: np.ndarray | None = None


def presentation(n: int, position: str, seed: int) -> np.ndarray:
    """[n, orders] bool: whether each order shows the pair swapped."""
    if position == "fixed":
        return np.zeros((n, 1), bool)
    if position == "swap":
        return (np.random.default_rng(seed).random(n) < 0.5)[:, None]
    return np.tile(np.array([False, True]), (n, 1))


def vote_p_a(votes: np.ndarray, invalid_score: float) -> np.ndarray:
    """Mean vote per pair over all orders and samples: A = 1, B = 0, invalid = invalid_score."""
    v = votes.reshape(votes.shape[0], -1).astype(np.float64)
    return np.where(votes.reshape(v.shape) == INVALID, invalid_score, v).mean(axis=1)


def log_odds(p: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


class Judge:
    """Pairwise judge over a `genrm_jax.io.Model`.

    cot / genrm need an `engine` (genrm_jax.sampling.Engine, built from the model when omitted); bt / pairrm
    need the reward `head` (genrm_jax.models.heads) and read the model's params directly.
    """
    def __init__(self, model, config: JudgeConfig = JudgeConfig(), *, engine=None, head=None):
        self.model, self.config, self.head = model, config, head
        if config.method in ("cot", "genrm"):
            if engine is None:
                engine = Engine(model)
            self.engine = engine
        elif head is None:
            raise ValueError(f"method {config.method!r} needs the scalar reward head (head=...)")
        if config.method == "genrm":
            self.verdict_tokens = [_single_token(model.tokenizer, c) for c in ("A", "B")]
        if config.method == "cot" and config.verdict == "force":
            self._verdict_labels = verdict_label_tokens(model.tokenizer, prompts.VERDICT_STYLE[config.prompt])
        if config.method in ("cot", "genrm") and self.prompt_budget() < 1:
            raise ValueError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the model's "
                             f"context of {model.config.max_position_embeddings} tokens")

    def reply_tokens(self) -> int:
        """Tokens the reply needs after the prompt: max_new_tokens (cot) or the one verdict token (genrm)."""
        return 1 if self.config.method == "genrm" else self.config.max_new_tokens

    def prompt_budget(self) -> int:
        """The longest cot / genrm prompt that leaves room for the reply in the model's context (and, when set,
        at most `max_prompt_tokens`). A forced verdict also needs room for the verdict prefix and label."""
        room = int(self.model.config.max_position_embeddings) - self.reply_tokens()
        if self.config.method == "cot" and self.config.verdict == "force":
            room -= len(self._verdict_labels[0]) + 1
        cap = self.config.max_prompt_tokens
        return room if cap is None else min(room, cap)

    def fitted_conversation(self, conversation: list[dict], answer_a: str, answer_b: str, builder=None
                            ) -> list[dict] | None:
        """`conversation` cut from the left exactly as this judge cuts it into its prompt budget (prompts.fit),
        or None when the pair cannot be judged. Training records built on it are the judge's own prompts,
        instructions included (the training pipeline, cutting a too-long prompt from the left, would cut the
        instructions first)."""
        builder = builder or (prompts.genrm if self.config.method == "genrm" else prompts.PAIRWISE[self.config.prompt])
        seen = []

        def build(conv, *answers):
            seen.append(conv)
            return builder(conv, *answers)

        fitted = prompts.fit(self.model.tokenizer, build, conversation, answer_a, answer_b, self.prompt_budget())
        return seen[-1] if fitted.ids is not None else None  # the last conversation built is the one that fitted

    # ------------------------------------------------------------------------------------------------ API

    def compare(self, conversations: Sequence[list[dict]], answers_a: Sequence[str], answers_b: Sequence[str],
                *, progress: bool = False, hints: Sequence[str] | None = None,
                rubrics: Sequence[str] | None = None) -> Judgment:
        """`hints` (cot only): the better answer of each pair in the caller's labels ("A" / "B"); the judge
        then sees the Rationalizer prompt, which names the better answer and asks why (STaR rationalization),
        or, with the `pairwise` prompt, that prompt with the label given. `rubrics`: one rubric per pair for the
        `pairwise` prompt (prompts.rubric_for; default prompts.DEFAULT_RUBRIC); other prompts have none."""
        n = len(conversations)
        if hints is not None and (self.config.method != "cot" or len(hints) != n
                                  or any(h not in ("A", "B") for h in hints)):
            raise ValueError(f"hints: expected {n} labels 'A' / 'B', and only with method 'cot'")
        if rubrics is not None and (self.config.prompt != "pairwise" or len(rubrics) != n):
            raise ValueError(f"rubrics: expected {n} rubrics, and only with the 'pairwise' prompt")
        if not (len(answers_a) == len(answers_b) == n):
            raise ValueError(f"got {n} conversations, {len(answers_a)} answers A, {len(answers_b)} answers B")
        if n == 0:
            return Judgment(np.zeros(0), np.zeros((0, 1, self.config.k), np.int8), np.zeros((0, 1), bool), [],
                            {}, np.zeros(0, bool))
        tok, cfg = self.model.tokenizer, self.config
        answers_a = [prompts.truncate(tok, a, cfg.max_answer_tokens) for a in answers_a]
        answers_b = [prompts.truncate(tok, b, cfg.max_answer_tokens) for b in answers_b]
        swapped = presentation(n, cfg.position, cfg.seed)
        if cfg.method == "cot":
            return self._cot(conversations, answers_a, answers_b, swapped, progress, hints, rubrics)
        if cfg.method == "genrm":
            return self._genrm(conversations, answers_a, answers_b, swapped)
        return self._head(conversations, answers_a, answers_b, swapped, progress)

    def reward(self, conversations: Sequence[list[dict]], responses: Sequence[str], references: Sequence[str],
               *, progress: bool = False) -> np.ndarray:
        """r(x, y) - r(x, y_ref) = log p / (1 - p), p = P(y ≻ y_ref) (Mahan et al., Eq. 6), float64 [N]."""
        return log_odds(self.compare(conversations, responses, references, progress=progress).p_a,
                        self.config.reward_eps)

    # -------------------------------------------------------------------------------------------- methods

    def builder(self, rubric: str | None = None, hint: str | None = None):
        """The prompt builder `(conversation, answer_a, answer_b) -> messages` of this judge's prompt, with a
        rubric (`pairwise`) and the label shown as a hint ("A" / "B" in the order shown), when given."""
        if self.config.method == "genrm":
            return prompts.genrm
        name = self.config.prompt
        kwargs = {}
        if rubric is not None and name == "pairwise":
            kwargs["rubric"] = rubric
        if hint is not None:
            if name == "pairwise":
                kwargs["winner"] = hint
            elif name in prompts.HINTED:  # e.g. the judge prompt's hinted form is the Rationalizer prompt
                return functools.partial(prompts.HINTED[name], winner=hint)
            else:
                raise ValueError(f"prompt {name!r} has no hinted form (hints need one of "
                                 f"{', '.join(prompts.HINTED)} or 'pairwise')")
        return functools.partial(prompts.PAIRWISE[name], **kwargs) if kwargs else prompts.PAIRWISE[name]

    def _shown(self, builder, conversations, answers_a, answers_b, swapped, hints=None, rubrics=None):
        """(token ids of every judged (pair, order) prompt, pair-major; the judged pairs' indices; skipped
        {pair: reason}; truncated [N]). Each prompt is fitted to `prompt_budget()` (see `prompts.fit`)."""
        budget, tok = self.prompt_budget(), self.model.tokenizer
        ids, judged, skipped = [], [], {}
        truncated = np.zeros(len(conversations), bool)
        for i, conv in enumerate(conversations):
            row = []
            for s in swapped[i]:
                a, b = (answers_b[i], answers_a[i]) if s else (answers_a[i], answers_b[i])
                build = builder
                if hints is not None or rubrics is not None:  # a hint names the better answer as shown here
                    shown = None if hints is None else hints[i] if not s else ("B" if hints[i] == "A" else "A")
                    build = self.builder(None if rubrics is None else rubrics[i], shown)
                f = prompts.fit(tok, build, conv, a, b, budget)
                if f.ids is None:
                    skipped[i] = (f"too long: the judge prompt is {f.bare_tokens} tokens with no conversation "
                                  f"text (instructions and answers, max_answer_tokens="
                                  f"{self.config.max_answer_tokens}); with {self.reply_tokens()} reply tokens "
                                  f"the model's context of {self.model.config.max_position_embeddings} leaves "
                                  f"no room for the conversation")
                    break
                row.append(f.ids)
                truncated[i] |= f.truncated
            if i not in skipped:
                ids.extend(row)
                judged.append(i)
        truncated[list(skipped)] = False
        return ids, judged, skipped, truncated

    def _cot(self, conversations, answers_a, answers_b, swapped, progress, hints=None, rubrics=None):
        cfg = self.config
        ids, judged, skipped, truncated = self._shown(prompts.PAIRWISE[cfg.prompt], conversations, answers_a,
                                                      answers_b, swapped, hints, rubrics)
        style = prompts.VERDICT_STYLE[cfg.prompt]
        stops = tuple(cfg.stop_strings)
        if cfg.verdict == "force":  # stop where the judge starts its own verdict: the prefix is appended for it
            stops = tuple(dict.fromkeys(stops + (prompts.VERDICT_PREFIX[style].strip(),)))
        sp = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            n=cfg.k, seed=cfg.seed, stop_strings=stops)
        # forced verdicts are scored from each row's KV cache as its batch ends (the keyword only when used: test
        # engines that only sample take none)
        then = {"then": forced_continuation(self.model.tokenizer, style, self._verdict_labels)} \
            if cfg.verdict == "force" else {}
        outs = self.engine.generate(ids, sp, progress=progress, **then) if ids else []
        n, orders = swapped.shape
        votes = np.full((n, orders, cfg.k), INVALID, np.int8)
        sample_p = np.full((n, orders, cfg.k), np.nan)
        rationales = [[] for _ in range(n)]
        if cfg.verdict == "force" and outs:
            texts, p_shown, labels = self._force(ids, outs, style)
        for row, i in enumerate(judged):
            for o in range(orders):
                flip = bool(swapped[i, o])
                for j, c in enumerate(outs[row * orders + o]):
                    if cfg.verdict == "force":
                        text, v, p = texts[row * orders + o][j], labels[row * orders + o][j], \
                            p_shown[row * orders + o][j]
                        sample_p[i, o, j] = 1.0 - p if flip else p
                    else:
                        text, v = c.text, verdicts.parse(c.text, style)
                        if v is not None:
                            sample_p[i, o, j] = float((v == "A") != flip)
                    rationales[i].append(text)
                    if v is not None:  # map the shown label back to the caller's
                        votes[i, o, j] = VOTE_A if (v == "A") != flip else VOTE_B
        p_a = vote_p_a(votes, cfg.invalid_score)
        if cfg.verdict == "force" and judged:
            # the expected vote: the judgments' label probabilities, averaged over samples and both orders. A
            # position-biased judge (the 135M model says "B" to nearly everything) still ranks the two answers
            # by how much its P(A) moves when they swap places, where its drawn votes would tie at 0.5.
            p_a[judged] = np.nanmean(sample_p[judged].reshape(len(judged), -1), axis=1)
        return Judgment(p_a, votes, swapped, rationales, skipped, truncated, sample_p)

    def _force(self, prompt_ids, outs, style):
        """Forced verdicts (see `forced`): per prompt and sample, the judgment text with its verdict written out,
        P(shown A) and the label."""
        cfg = self.config
        rows = forced(self.engine, self.model.tokenizer, prompt_ids, outs, style, self._verdict_labels,
                      cfg.temperature, cfg.seed)
        texts = [[None] * len(c) for c in outs]
        p_shown = [[None] * len(c) for c in outs]
        labels = [[None] * len(c) for c in outs]
        for r, j, rationale, probs, drawn in rows:
            label = "AB"[drawn]
            texts[r][j] = prompts.with_verdict(rationale, label, style)
            p_shown[r][j], labels[r][j] = float(probs[0]), label
        return texts, p_shown, labels

    def _genrm(self, conversations, answers_a, answers_b, swapped):
        ids, judged, skipped, truncated = self._shown(prompts.genrm, conversations, answers_a, answers_b, swapped)
        n, orders = swapped.shape
        p_a = np.full(n, self.config.invalid_score)
        votes = np.full((n, orders, 1), INVALID, np.int8)
        if judged:
            lp = np.asarray(self.engine.score_next_token(ids, self.verdict_tokens), np.float64)  # [rows, 2]
            p_shown_a = 1.0 / (1.0 + np.exp(lp[:, 1] - lp[:, 0]))  # softmax restricted to the two verdict tokens
            p = np.where(swapped[judged].reshape(-1), 1.0 - p_shown_a, p_shown_a).reshape(len(judged), orders)
            p_a[judged] = p.mean(axis=1)
            votes[judged] = np.where(p >= 0.5, VOTE_A, VOTE_B).astype(np.int8)[:, :, None]
        return Judgment(p_a, votes, swapped, [[] for _ in range(n)], skipped, truncated)

    def _head(self, conversations, answers_a, answers_b, swapped, progress):
        """bt / pairrm: the head's logit of the caller's A beating B, averaged over the orders shown."""

        cfg, tok = self.config, self.model.tokenizer
        n, orders = swapped.shape
        seqs, owners, skipped = [], [], {}  # one pair -> 2 sequences (bt: A, B answers; pairrm: A-B and B-A)
        truncated = np.zeros(n, bool)
        for i, conv in enumerate(conversations):
            stats = pipeline.Stats()
            ex = pipeline.encode_record({"prompt": list(conv), "chosen": answers_a[i], "rejected": answers_b[i]},
                                        cfg.method, tok, cfg.max_len, index=i, stats=stats)
            if ex is None:  # empty answer or too long: no score, the pair stays at P = invalid_score
                why = {"empty_chosen": "empty answer A", "empty_rejected": "empty answer B",
                       "too_long": f"too long: an answer leaves no room for the conversation in max_len={cfg.max_len}"}
                skipped[i] = "; ".join(why.get(r, r) for r in stats.skipped)
                continue
            truncated[i] = bool(stats.truncated)
            seqs.extend(ex["tokens"])
            owners.append(i)
        rewards = _scalar_rewards(self.model, self.head, seqs, cfg.batch_size, progress).reshape(-1, 2)
        # bt scores each answer alone, so the order shown cannot matter. pairrm: the A-B sequence gives
        # logit(A≻B), the B-A one -logit(B≻A); "both" averages the two presentations.
        def shown_logit(row, s):
            if cfg.method == "bt":
                return rewards[row, 0] - rewards[row, 1]
            return -rewards[row, 1] if s else rewards[row, 0]

        p_a = np.full(n, cfg.invalid_score)
        votes = np.full((n, orders, 1), INVALID, np.int8)
        for row, i in enumerate(owners):
            ps = [1.0 / (1.0 + np.exp(-shown_logit(row, s))) for s in swapped[i]]
            p_a[i] = float(np.mean(ps))
            votes[i, :, 0] = [VOTE_A if p >= 0.5 else VOTE_B for p in ps]
        return Judgment(p_a, votes, swapped, [[] for _ in range(n)], skipped, truncated)


def _verdict_tokens(tokenizer, completion, style: str) -> tuple[str, list[int]]:
    """(the rationale: the judgment's text up to where it began a verdict, the token ids of rationale + the
    verdict prefix): what a forced verdict puts after the prompt."""
    rationale = completion.text.rstrip()
    return rationale, list(tokenizer.encode(rationale + prompts.VERDICT_PREFIX[style], add_special_tokens=False))


def forced_continuation(tokenizer, style: str, label_tokens):
    """The `sampling.Continuation` of forced verdicts: `generate(..., then=...)` scores each judgment's
    rationale + verdict prefix from the row's KV cache, and `forced` reads the result."""
    return Continuation(lambda c: _verdict_tokens(tokenizer, c, style)[1], tuple(t[-1] for t in label_tokens))


def forced(engine, tokenizer, prompt_ids, outs, style: str, label_tokens, temperature: float, seed: int):
    """Forced verdicts: for each judgment, the rationale (its text up to where it began a verdict) plus the
    verdict prefix is scored; the labels' next-token probabilities, renormalised over the labels, are the
    verdict's distribution, and the verdict is drawn from it at `temperature` (argmax when 0) with a uniform
    seeded by (seed, prompt, sample): the same draw whatever the batch. The scores are those `generate` computed
    from each row's KV cache (`then=forced_continuation(...)`); completions without them are scored here by
    `engine.score_next_token`, a second prefill of prompt + rationale + prefix (same values up to rounding).
    Returns one row per (prompt r, sample j): (r, j, rationale, probabilities [labels] float64, index of the
    drawn label)."""
    candidates = [t[-1] for t in label_tokens]
    seqs, owners, lp = [], [], []
    for r, (ids, completions) in enumerate(zip(prompt_ids, outs)):
        for j, c in enumerate(completions):
            rationale, tail = _verdict_tokens(tokenizer, c, style)
            owners.append((r, j, rationale))
            lp.append(c.continuation)
            if c.continuation is None:
                seqs.append(list(ids) + tail)
    if not owners:
        return []
    if seqs:
        scored = iter(np.asarray(engine.score_next_token(seqs, candidates), np.float64))  # [rows, labels]
        lp = [next(scored) if x is None else x for x in lp]
    rows = []
    for (r, j, rationale), logp in zip(owners, lp):
        logp = np.asarray(logp, np.float64)
        probs = np.exp(logp - logp.max())
        probs /= probs.sum()
        if temperature == 0.0:
            drawn = int(np.argmax(probs))
        else:
            q = np.exp((logp - logp.max()) / temperature)
            u = np.random.default_rng([seed, zlib.crc32(np.asarray(prompt_ids[r], np.int32).tobytes()), j]).random()
            drawn = int(min(np.searchsorted(np.cumsum(q / q.sum()), u, side="right"), len(q) - 1))
        rows.append((r, j, rationale, probs, drawn))
    return rows


def verdict_label_tokens(tokenizer, style: str) -> list[list[int]]:
    """Token ids of VERDICT_PREFIX + label for each label of the style (A and B; 1-5); each must end in one token of its own
    (the label) after the prefix's tokens, so that one next-token distribution holds the whole verdict."""
    prefix = prompts.VERDICT_PREFIX[style]
    base = list(tokenizer.encode(prefix, add_special_tokens=False))
    out = []
    for label in prompts.VERDICT_LABELS[style]:
        ids = list(tokenizer.encode(prefix + label, add_special_tokens=False))
        if ids[:len(base)] != base or len(ids) != len(base) + 1:
            raise ValueError(f"verdict {prefix + label!r} does not tokenize as the prefix's tokens plus one label "
                             f"token for this tokenizer; forced verdicts need that")
        out.append(ids)
    return out


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the verdict {text!r} is {len(ids)} tokens for this tokenizer; GenRM needs one")
    return ids[0]


@functools.lru_cache(maxsize=None)
def _jitted_reward():
    import jax


    return jax.jit(heads.scalar_reward, static_argnums=(4,))


def _scalar_rewards(model, head, seqs: list, batch_size: int, progress: bool) -> np.ndarray:
    """Head rewards for token sequences, batched with right padding to a few bucketed lengths."""
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    if not seqs:
        return np.zeros(0)
    fn = _jitted_reward()
    pad = model.tokenizer.pad_token_id or 0
    out = np.zeros(len(seqs))
    order = np.argsort([len(s) for s in seqs])  # similar lengths together: fewer pad tokens, fewer shapes
    for start in tqdm(range(0, len(seqs), batch_size), desc="reward head", disable=not progress):
        idx = order[start:start + batch_size]
        length = 1 << int(np.ceil(np.log2(max(len(seqs[i]) for i in idx))))
        tokens = np.full((batch_size, length), pad, np.int32)
        mask = np.zeros((batch_size, length), np.int32)
        for row, i in enumerate(idx):
            tokens[row, :len(seqs[i])] = seqs[i]
            mask[row, :len(seqs[i])] = 1
        mask[len(idx):, 0] = 1  # filler rows: one real token so that every row has a last token
        r = fn(model.params, head, jnp.asarray(tokens), jnp.asarray(mask), model.config)
        out[idx] = np.asarray(r)[:len(idx)]
    return out
