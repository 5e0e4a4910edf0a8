"""The method registry: one entry per method says everything the library needs to know about it.

    methods.get("star_dpo") -> Method(name="star_dpo", part="star", loss="dpo", judge="cot", held_copies=2, ...)
    methods.of_config(c)    -> the Method a config names (`c.method`)

Every experiment config names its method (`c.method`). The experiment skeleton (genrm_jax/experiment.py) runs
the method's `part`; the STaR loop, the baselines and Self-Rationalization read the loss, the head, the judge and
the record builder from here; the memory planner (genrm_jax/plan.py) reads the loss and the held weight copies;
`judge/api` and `judge/benchmark` read the judge kinds (`JUDGES`). A new method is one `register(Method(...))`
below (plus its loss when it is new: one `@losses.register_loss` function; its record builder when it is new: one
`@register_records` function in the module of its part), one config and one test.

This module imports nothing from genrm_jax, so that every layer can read it; loss names are checked against
genrm_jax.losses by the tests and when an experiment starts.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

# The judges an evaluation can use: name -> whether it scores with a trained scalar reward head (judge/api.py).
JUDGES = {"cot": False, "genrm": False, "bt": True, "pairrm": True}

# The experiment parts (genrm_jax/experiment.py runs one of them) and the config group each one reads.
PARTS = ("zero_shot", "baseline", "star", "self_rationalization")


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    part: str                 # PARTS: which experiment part runs it
    loss: str | None          # losses.LOSSES name it trains with (None: nothing is trained)
    judge: str = "cot"        # JUDGES name of the judge that evaluates it
    judge_overrides: tuple[tuple[str, object], ...] = ()  # of config.judge for that judge
    head: bool = False        # trains a fresh scalar reward head beside the model
    records: str = ""         # the registered builder of its training records (register_records)
    samples: tuple[str, ...] = ()  # what the model samples to build them: "plain" and/or "hinted" judgments
    held_copies: int = 0      # full weight copies alive besides the trained ones (the memory planner's figure)
    summary: str = ""

    def __post_init__(self):
        if self.part not in PARTS:
            raise ValueError(f"method {self.name!r}: part {self.part!r} is not one of {PARTS}")
        if self.judge not in JUDGES:
            raise ValueError(f"method {self.name!r}: judge {self.judge!r} is not one of {tuple(JUDGES)}")
        if JUDGES[self.judge] != self.head:
            raise ValueError(f"method {self.name!r}: judge {self.judge!r} and head={self.head} disagree")
        if any(s not in ("plain", "hinted") for s in self.samples):
            raise ValueError(f"method {self.name!r}: samples must be 'plain' and/or 'hinted', got {self.samples}")

    def judge_config(self, **extra) -> dict:
        """The overrides of config.judge that make the method's evaluation judge."""
        return {"method": self.judge, **dict(self.judge_overrides), **extra}


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"config.method: unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name]


def of_config(c) -> Method:
    """The Method a config names: `c.method`."""
    name = c.get("method") if hasattr(c, "get") else None
    if not name:
        raise ValueError(f"config.method: missing; expected one of {', '.join(METHODS)}")
    return get(name)


def zero_shot_judges() -> tuple[str, ...]:
    return tuple(j for j, head in JUDGES.items() if not head)


# ----------------------------------------------------------------------------------- record builders

RECORDS: dict[str, Callable] = {}


def register_records(name: str):
    """Decorator: `fn` builds a method's training records (its signature is its part's: a STaR builder takes
    (plain lines, hinted lines), a baseline's takes (pairs, cut, fit))."""
    def deco(fn):
        if name in RECORDS and RECORDS[name] is not fn:
            raise ValueError(f"record builder {name!r} is registered twice")
        RECORDS[name] = fn
        return fn
    return deco


def records(method: Method) -> Callable:
    if method.records not in RECORDS:
        raise ValueError(f"method {method.name!r}: no record builder {method.records!r} is registered (the module "
                         f"of part {method.part!r} registers it when imported)")
    return RECORDS[method.records]


# ---------------------------------------------------------------------------------------- the methods

register(Method("llm_judge", "zero_shot", None, summary="a base model judges zero-shot (judges: config.methods)"))
register(Method("genrm", "baseline", "sft", judge="genrm", judge_overrides=(("position", "both"),),
                records="genrm", held_copies=1,
                summary="SFT on the verdict token alone, every pair in both orders (Mahan et al., Eq. 7)"))
register(Method("cot_genrm", "baseline", "sft", records="rationales", samples=("hinted",), held_copies=1,
                summary="SFT on rationale + verdict; rationales from a file or one hinted Rationalizer round"))
register(Method("bt_rm", "baseline", "bt", judge="bt", head=True, records="pairs", held_copies=1,
                summary="a Bradley-Terry scalar head trained with the model"))
register(Method("pairrm", "baseline", "pairrm", judge="pairrm", head=True, records="pairs", held_copies=1,
                summary="the PairRM head on one sequence holding both answers, both orders"))
# The STaR loop's sampler keeps its own copy of the weights besides the one fit starts from.
register(Method("star_sft", "star", "sft", records="star_sft", samples=("plain",), held_copies=2,
                summary="SFT on the current judge's correct judgments"))
register(Method("star_dpo", "star", "dpo", records="star_dpo", samples=("plain",), held_copies=2,
                summary="DPO on (correct, incorrect) judgments of the same prompt"))
register(Method("rationalizer", "star", "sft", records="rationalized", samples=("hinted",), held_copies=2,
                summary="SFT on rationales sampled with the true label as a hint"))
register(Method("rationalizer_ipo", "star", "ipo", records="rationalized_pairs", samples=("plain", "hinted"),
                held_copies=2, summary="IPO on hinted-correct vs. the judge's own incorrect judgments"))
# J_SFT (kept for the best-of-N baseline), the sampler's copy and DPO's starting weights.
register(Method("self_rationalization", "self_rationalization", "dpo", records="sre_pairs",
                samples=("plain", "hinted"), held_copies=3,
                summary="J_SFT (merged pointwise + pairwise SFT), then iterative DPO on its own judgments"))
