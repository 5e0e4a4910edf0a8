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
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

from genrm_jax.judge import prompts, verdicts

METHODS = ("cot", "genrm", "bt", "pairrm")
POSITIONS = ("fixed", "swap", "both")

# Vote codes in `Judgment.votes` (in the caller's labels).
VOTE_A, VOTE_B, INVALID = 1, 0, -1


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
    seed: int = 0
    invalid_score: float = 0.5     # P(A) contribution of a judgment with no verdict (RewardBench scores a tie)
    max_answer_tokens: int | None = None  # cut each answer to this many tokens before prompting
    max_len: int = 4096            # bt / pairrm: longest sequence (the conversation is cut from the left)
    batch_size: int = 8            # bt / pairrm forward batch
    reward_eps: float = 1e-3       # p is clipped to [eps, 1 - eps] before log p/(1-p)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.method == "cot" and self.prompt not in prompts.PAIRWISE:
            raise ValueError(f"prompt must be one of {tuple(prompts.PAIRWISE)}, got {self.prompt!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0.0 <= self.invalid_score <= 1.0:
            raise ValueError(f"invalid_score must be in [0, 1], got {self.invalid_score}")


@dataclasses.dataclass
class Judgment:
    """Results for N pairs, in the caller's A/B labels.

    p_a: [N] P(A better).  votes: [N, orders, k] int8 (1 = A, 0 = B, -1 invalid); "orders" is 2 with
    position="both" (order 1 is the swapped presentation), else 1.  swapped: [N, orders] whether that order
    showed the caller's B first.  rationales: [N][orders * k] judge texts (cot) or [] (other methods).
    """
    p_a: np.ndarray
    votes: np.ndarray
    swapped: np.ndarray
    rationales: list[list[str]]


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
                from genrm_jax.sampling import Engine

                engine = Engine(model)
            self.engine = engine
        elif head is None:
            raise ValueError(f"method {config.method!r} needs the scalar reward head (head=...)")
        if config.method == "genrm":
            self.verdict_tokens = [_single_token(model.tokenizer, c) for c in ("A", "B")]

    # ------------------------------------------------------------------------------------------------ API

    def compare(self, conversations: Sequence[list[dict]], answers_a: Sequence[str], answers_b: Sequence[str],
                *, progress: bool = False) -> Judgment:
        n = len(conversations)
        if not (len(answers_a) == len(answers_b) == n):
            raise ValueError(f"got {n} conversations, {len(answers_a)} answers A, {len(answers_b)} answers B")
        if n == 0:
            return Judgment(np.zeros(0), np.zeros((0, 1, self.config.k), np.int8), np.zeros((0, 1), bool), [])
        tok, cfg = self.model.tokenizer, self.config
        answers_a = [prompts.truncate(tok, a, cfg.max_answer_tokens) for a in answers_a]
        answers_b = [prompts.truncate(tok, b, cfg.max_answer_tokens) for b in answers_b]
        swapped = presentation(n, cfg.position, cfg.seed)
        if cfg.method == "cot":
            return self._cot(conversations, answers_a, answers_b, swapped, progress)
        if cfg.method == "genrm":
            return self._genrm(conversations, answers_a, answers_b, swapped)
        return self._head(conversations, answers_a, answers_b, swapped, progress)

    def reward(self, conversations: Sequence[list[dict]], responses: Sequence[str], references: Sequence[str],
               *, progress: bool = False) -> np.ndarray:
        """r(x, y) - r(x, y_ref) = log p / (1 - p), p = P(y ≻ y_ref) (Mahan et al., Eq. 6), float64 [N]."""
        return log_odds(self.compare(conversations, responses, references, progress=progress).p_a,
                        self.config.reward_eps)

    # -------------------------------------------------------------------------------------------- methods

    def _shown(self, builder, conversations, answers_a, answers_b, swapped):
        """Token ids of every (pair, order) prompt, pair-major."""
        out = []
        for i, conv in enumerate(conversations):
            for s in swapped[i]:
                a, b = (answers_b[i], answers_a[i]) if s else (answers_a[i], answers_b[i])
                out.append(prompts.render(self.model.tokenizer, builder(conv, a, b)))
        return out

    def _cot(self, conversations, answers_a, answers_b, swapped, progress):
        from genrm_jax.sampling import SamplingParams

        cfg = self.config
        ids = self._shown(prompts.PAIRWISE[cfg.prompt], conversations, answers_a, answers_b, swapped)
        sp = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            n=cfg.k, seed=cfg.seed, stop_strings=tuple(cfg.stop_strings))
        outs = self.engine.generate(ids, sp, progress=progress)
        style = prompts.VERDICT_STYLE[cfg.prompt]
        n, orders = swapped.shape
        votes = np.full((n, orders, cfg.k), INVALID, np.int8)
        rationales = []
        for i in range(n):
            texts = []
            for o in range(orders):
                for j, c in enumerate(outs[i * orders + o]):
                    texts.append(c.text)
                    v = verdicts.parse(c.text, style)
                    if v is not None:  # map the shown label back to the caller's
                        votes[i, o, j] = VOTE_A if (v == "A") != bool(swapped[i, o]) else VOTE_B
            rationales.append(texts)
        return Judgment(vote_p_a(votes, cfg.invalid_score), votes, swapped, rationales)

    def _genrm(self, conversations, answers_a, answers_b, swapped):
        ids = self._shown(prompts.genrm, conversations, answers_a, answers_b, swapped)
        lp = np.asarray(self.engine.score_next_token(ids, self.verdict_tokens), np.float64)  # [n*orders, 2]
        p_shown_a = 1.0 / (1.0 + np.exp(lp[:, 1] - lp[:, 0]))  # softmax restricted to the two verdict tokens
        n, orders = swapped.shape
        p_a = np.where(swapped.reshape(-1), 1.0 - p_shown_a, p_shown_a).reshape(n, orders)
        votes = np.where(p_a >= 0.5, VOTE_A, VOTE_B).astype(np.int8)[:, :, None]
        return Judgment(p_a.mean(axis=1), votes, swapped, [[] for _ in range(n)])

    def _head(self, conversations, answers_a, answers_b, swapped, progress):
        """bt / pairrm: the head's logit of the caller's A beating B, averaged over the orders shown."""
        from genrm_jax.data import pipeline

        cfg, tok = self.config, self.model.tokenizer
        n, orders = swapped.shape
        seqs, owners = [], []  # one pair -> 2 sequences (bt: A, B answers; pairrm: A-B and B-A)
        for i, conv in enumerate(conversations):
            ex = pipeline.encode_record({"prompt": list(conv), "chosen": answers_a[i], "rejected": answers_b[i]},
                                        cfg.method, tok, cfg.max_len)
            if ex is not None:  # empty answers: no score, the pair stays at P = invalid_score
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
        return Judgment(p_a, votes, swapped, [[] for _ in range(n)])


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the verdict {text!r} is {len(ids)} tokens for this tokenizer; GenRM needs one")
    return ids[0]


@functools.lru_cache(maxsize=None)
def _jitted_reward():
    import jax

    from genrm_jax.models import heads

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
