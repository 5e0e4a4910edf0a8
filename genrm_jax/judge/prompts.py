"""Judge prompts as chat messages, rendered through the model's own chat template.

Each builder returns `[{"role": ..., "content": ...}, ...]`; `render` turns that into token ids with the
generation prompt appended, so the judge's reply starts exactly where sampling (or next-token scoring) begins.

- `judge`: LLM-as-judge / STaR / CoT-GenRM (Mahan et al., 2024): reason, then `[[A]]` or `[[B]]`, no tie.
- `rationalizer`: the same task with the true label given: explain why the better answer is better and end
  with its verdict (STaR rationalization for examples the judge got wrong).
- `genrm`: GenRM without reasoning: reply with the bare letter `A` or `B`.
- `verify`: `judge` for questions with one correct answer (the verifiable pairs of genrm_jax/data/verifiable.py):
  work the answer out in a line, then `[[A]]` or `[[B]]`. A fifth of `judge`'s tokens, which is most of what an
  evaluation costs at 135M (the `learn` preset); its hinted form is `verify_hinted`.
- `pointwise`, `pairwise`, `meta_judge`: Self-Rationalization (Trivedi et al., 2024) style: feedback against a
  5-point rubric ending in `[RESULT] 1-5`, a pairwise choice ending in `[RESULT] 1` or `[RESULT] 2`, and a
  judgment of a judgment rated 1-5.
(Bradley-Terry and PairRM sequences come from `genrm_jax.data.pipeline.encode_record`, so that judging reads
exactly what training wrote.)

A conversation with earlier turns renders them under `[Chat Context]` and its last user turn as the question,
so single- and multi-turn pairs share one template.

`fit` renders a pairwise prompt within a token budget the way training fits its sequences
(`genrm_jax.tokenizer.fit_prefix`): only the conversation loses tokens, from the left (earliest turns first,
then the start of the oldest remaining text, marked `[...]`); instructions and answers stay whole.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from genrm_jax.data.rubrics import DEFAULT_RUBRIC, HH_RUBRICS, rubric, rubric_for  # noqa: F401 (judges' rubrics)
from genrm_jax.tokenizer import chat_ids, fit_prefix

JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. Choose the assistant that follows the user's instructions and "
    "answers the user's question better, considering helpfulness, relevance, accuracy, depth, creativity and "
    "level of detail. Begin with a short explanation comparing the two responses. Avoid any position bias: the "
    "order in which the responses appear must not influence your decision. Do not let response length or the "
    "assistants' names sway you; be as objective as possible. After your explanation, output your final "
    "verdict strictly in this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better. "
    "There are no ties: you must pick one."
)

GENRM_SYSTEM = (
    "Please act as an impartial judge and decide which of two AI assistants' responses to the user question "
    "below is better: the one that follows the user's instructions and answers the question more helpfully, "
    "accurately and harmlessly. Reply with a single letter and nothing else: A if assistant A is better, "
    "B if assistant B is better."
)

RATIONALIZER_TASK = (
    "Response {winner} is better than response {loser}. Explain why response {winner} is better than response "
    "{loser}, comparing the two responses as an impartial judge would, without mentioning that you were told "
    "which one is better. End with the final verdict \"[[{winner}]]\"."
)

VERIFY_SYSTEM = (
    "You check answers. Work out the correct answer to the question in one short line, then give the verdict: "
    "\"[[A]]\" if answer A is correct, \"[[B]]\" if answer B is correct."
)

VERIFY_HINT = ("\n\nAnswer {winner} is correct. Work out the answer in one short line that shows why, without "
               "saying you were told, and end with \"[[{winner}]]\".")

POINTWISE_TASK = (
    "###Task Description:\n"
    "A conversation, a response to evaluate and a score rubric with evaluation criteria are given.\n"
    "1. Write detailed feedback that assesses the quality of the response strictly by the score rubric, "
    "not by general judgment.\n"
    "2. After the feedback, write a score that is an integer between 1 and 5, referring to the rubric.\n"
    "3. The output format is: \"Feedback: (feedback) [RESULT] (an integer between 1 and 5)\"\n"
    "4. Do not generate any other opening, closing or explanation.\n\n"
    "{conversation}\n\n###Response to evaluate:\n{response}\n\n###Score Rubric:\n{rubric}\n\n###Feedback:"
)

PAIRWISE_TASK = (
    "###Task Description:\n"
    "A conversation, two responses and a score rubric with evaluation criteria are given.\n"
    "1. Write detailed feedback that compares the two responses strictly by the score rubric.\n"
    "2. After the feedback, state which response is better: 1 or 2. There are no ties.\n"
    "3. The output format is: \"Feedback: (feedback) [RESULT] (1 or 2)\"\n"
    "4. Do not generate any other opening, closing or explanation.\n\n"
    "{conversation}\n\n###Response 1:\n{response_1}\n\n###Response 2:\n{response_2}\n\n"
    "###Score Rubric:\n{rubric}\n\n###Feedback:"
)

META_JUDGE_TASK = (
    "###Task Description:\n"
    "A conversation, a response, and a judge's evaluation of that response are given.\n"
    "1. Write feedback on the evaluation: is its reasoning correct, grounded in the response, consistent with "
    "the rubric, and does its score follow from its reasoning?\n"
    "2. Then rate the evaluation with an integer between 1 (wrong, unfounded) and 5 (accurate, well argued).\n"
    "3. The output format is: \"Feedback: (feedback) [RESULT] (an integer between 1 and 5)\"\n\n"
    "{conversation}\n\n###Response:\n{response}\n\n###Score Rubric:\n{rubric}\n\n"
    "###Evaluation to rate:\n{judgment}\n\n###Feedback:"
)

_SPEAKER = {"user": "User", "assistant": "Assistant", "system": "System"}


def _check(conversation: list[dict]) -> None:
    if not conversation or conversation[-1].get("role") != "user":
        raise ValueError("a conversation must be a non-empty list of turns ending with the user's turn")


def conversation_block(conversation: list[dict]) -> str:
    """`[Chat Context]` of the earlier turns (if any), then `[User Question]` with the last user turn."""
    _check(conversation)
    parts = []
    if len(conversation) > 1:
        ctx = "\n\n".join(f"{_SPEAKER[t['role']]}: {t['content']}" for t in conversation[:-1])
        parts.append(f"[Chat Context]\n{ctx}\n")
    parts.append(f"[User Question]\n{conversation[-1]['content']}")
    return "\n".join(parts)


def answers_block(answer_a: str, answer_b: str) -> str:
    return (f"[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
            f"[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]")


def judge(conversation: list[dict], answer_a: str, answer_b: str) -> list[dict]:
    body = f"{conversation_block(conversation)}\n\n{answers_block(answer_a, answer_b)}"
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": body}]


def _loser(winner: str) -> str:
    """The other letter of a hinted prompt's `winner` (which must be 'A' or 'B')."""
    if winner not in ("A", "B"):
        raise ValueError(f"winner must be 'A' or 'B', got {winner!r}")
    return "B" if winner == "A" else "A"


def rationalizer(conversation: list[dict], answer_a: str, answer_b: str, winner: str) -> list[dict]:
    loser = _loser(winner)
    body = (f"{conversation_block(conversation)}\n\n{answers_block(answer_a, answer_b)}\n\n"
            + RATIONALIZER_TASK.format(winner=winner, loser=loser))
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": body}]


def verify(conversation: list[dict], answer_a: str, answer_b: str) -> list[dict]:
    body = f"{conversation_block(conversation)}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}"
    return [{"role": "system", "content": VERIFY_SYSTEM}, {"role": "user", "content": body}]


def verify_hinted(conversation: list[dict], answer_a: str, answer_b: str, winner: str) -> list[dict]:
    _loser(winner)  # checks the letter
    messages = verify(conversation, answer_a, answer_b)
    messages[1]["content"] += VERIFY_HINT.format(winner=winner)
    return messages


def genrm(conversation: list[dict], answer_a: str, answer_b: str) -> list[dict]:
    body = f"{conversation_block(conversation)}\n\n{answers_block(answer_a, answer_b)}"
    return [{"role": "system", "content": GENRM_SYSTEM}, {"role": "user", "content": body}]


POINTWISE_HINT = ("\n\nA careful expert assessed this response as {hint}. Write the feedback that leads to that "
                  "assessment, strictly by the rubric and without mentioning that you were told it, and end with "
                  "the score it implies.")
PAIRWISE_HINT = ("\n\nResponse {winner} is better than response {loser}. Write the feedback that explains why, "
                 "strictly by the rubric and without mentioning that you were told which one is better, and end "
                 "with \"[RESULT] {winner}\".")


def pointwise(conversation: list[dict], response: str, rubric: str = DEFAULT_RUBRIC, reference: str | None = None,
              hint: str | None = None) -> list[dict]:
    """`reference`: a score-5 reference answer (Feedback-Collection), shown when given; `hint`: the gold
    assessment in words (e.g. "deserving a score of 4"), for Rationalizer-style seed rationales."""
    response_block = response
    if reference:
        response_block += f"\n\n###Reference Answer (Score 5):\n{reference}"
    text = POINTWISE_TASK.format(conversation=conversation_block(conversation), response=response_block,
                                 rubric=rubric)
    if hint:
        text = text.removesuffix("\n\n###Feedback:") + POINTWISE_HINT.format(hint=hint) + "\n\n###Feedback:"
    return [{"role": "user", "content": text}]


def pairwise(conversation: list[dict], response_1: str, response_2: str, rubric: str = DEFAULT_RUBRIC,
             winner: str | None = None) -> list[dict]:
    """`winner` ("A" = response 1, "B" = response 2): the true label as a hint (Rationalizer seed rationales)."""
    text = PAIRWISE_TASK.format(conversation=conversation_block(conversation), response_1=response_1,
                                response_2=response_2, rubric=rubric)
    if winner is not None:
        if winner not in ("A", "B"):
            raise ValueError(f"winner must be 'A' or 'B', got {winner!r}")
        w, lo = ("1", "2") if winner == "A" else ("2", "1")
        text = text.removesuffix("\n\n###Feedback:") + PAIRWISE_HINT.format(winner=w, loser=lo) + "\n\n###Feedback:"
    return [{"role": "user", "content": text}]


def meta_judge(conversation: list[dict], response: str, judgment: str, rubric: str = DEFAULT_RUBRIC) -> list[dict]:
    text = META_JUDGE_TASK.format(conversation=conversation_block(conversation), response=response,
                                  judgment=judgment, rubric=rubric)
    return [{"role": "user", "content": text}]


# Pairwise builders by name (all take conversation, answer_a, answer_b); the verdict style each one asks for.
PAIRWISE = {"judge": judge, "verify": verify, "genrm": genrm, "pairwise": pairwise}
# The hinted form of a brackets prompt (STaR rationalization): the same task with the better answer named.
HINTED = {"judge": rationalizer, "verify": verify_hinted}
VERDICT_STYLE = {"judge": "brackets", "verify": "brackets", "rationalizer": "brackets", "genrm": "bare",
                 "pairwise": "result_pair",
                 "pointwise": "result", "meta_judge": "result"}


# Forced verdicts (judge/api.py): when a rationale ends, VERDICT_PREFIX is appended and the verdict is read from
# the next-token probabilities of the two labels; `with_verdict` writes the judgment a forced verdict stands for.
# The pointwise style ("result") has five labels, the scores; its verdict is a score, not "A" / "B".
VERDICT_PREFIX = {"brackets": "\n\n[[", "result_pair": "\n[RESULT] ", "result": "\n[RESULT] "}
VERDICT_LABELS = {"brackets": ("A", "B"), "result_pair": ("1", "2"), "result": ("1", "2", "3", "4", "5")}
_VERDICT_SUFFIX = {"brackets": "]]", "result_pair": "", "result": ""}


def with_verdict(rationale: str, label, style: str = "brackets") -> str:
    """The judgment text `rationale` + verdict `label` ("A" / "B"; a score 1-5 for "result") as the judge
    prompt asks for it."""
    shown = str(label) if style == "result" else VERDICT_LABELS[style][0 if label == "A" else 1]
    return rationale.rstrip() + VERDICT_PREFIX[style] + shown + _VERDICT_SUFFIX[style]


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids through the model's chat template (the generation prompt opens the judge's reply)."""
    return chat_ids(tokenizer, messages, add_generation_prompt=add_generation_prompt)


def truncate(tokenizer, text: str, max_tokens: int | None) -> str:
    """`text` cut to at most `max_tokens` tokens, marked, so that long answers fit a small context or CPU budget."""
    if max_tokens is None:
        return text
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens]) + " [...]"


# ------------------------------------------------------------------------------------------------ fitting

CUT_MARK = "[...] "  # opens a turn whose start was cut to fit the context
_FIT_TRIES = 8  # re-renders after a cut: headers, the mark and token merges make lengths not quite additive


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A prompt rendered within a budget. ids is None when even the prompt without any conversation text
    (`bare_tokens`: instructions, answers, template) leaves no room for one token of the conversation."""
    ids: list[int] | None
    truncated: bool      # the conversation was cut from the left
    bare_tokens: int = 0  # length of the prompt with an empty conversation (set when the full one did not fit)


def _content_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def cut_left(tokenizer, conversation: list[dict], n_tokens: int) -> list[dict]:
    """`conversation` without its first `n_tokens` content tokens: whole turns go first, then the start of the
    oldest turn left (marked with CUT_MARK). The last turn keeps at least its tail when n_tokens allows."""
    out = []
    for k, turn in enumerate(conversation):
        ids = _content_ids(tokenizer, turn["content"])
        if n_tokens == 0:
            out.append(dict(turn))
        elif n_tokens >= len(ids) and k + 1 < len(conversation):
            n_tokens -= len(ids)  # the whole turn goes (never the last: the question the answers reply to)
        else:
            out.append({**turn, "content": CUT_MARK + tokenizer.decode(ids[n_tokens:])})
            n_tokens = 0
    return out


def fit(tokenizer, builder: Callable[..., list[dict]], conversation: list[dict], answer_a: str, answer_b: str,
        max_tokens: int) -> Fitted:
    """Token ids of `builder(conversation, answer_a, answer_b)` in at most `max_tokens` tokens (see the module
    docstring): the conversation is cut from the left as training cuts its prefix; answers are never cut here
    (`truncate` them first)."""
    ids = render(tokenizer, builder(conversation, answer_a, answer_b))
    if len(ids) <= max_tokens:
        return Fitted(ids, False)
    flat = [t for turn in conversation for t in _content_ids(tokenizer, turn["content"])]
    bare = len(render(tokenizer, builder([{"role": "user", "content": ""}], answer_a, answer_b)))
    target = max_tokens
    for _ in range(_FIT_TRIES):
        kept, _ = fit_prefix(flat, [bare], target)  # the conversation text as the prefix, the rest as completion
        if kept is None or not kept:
            break
        ids = render(tokenizer, builder(cut_left(tokenizer, conversation, len(flat) - len(kept)), answer_a,
                                        answer_b))
        if len(ids) <= max_tokens:
            return Fitted(ids, True, bare)
        # turn headers and the cut mark cost tokens outside `flat`: keep that many fewer than this try kept
        target = bare + len(kept) - (len(ids) - max_tokens)
    return Fitted(None, False, bare)
