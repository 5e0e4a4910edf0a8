"""Experiment configs: every field's range checked before anything is bound (`validate`), and settings dataclasses
built from config groups (`from_config`: an unknown key is an error that names it, never silently ignored)."""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable


class ConfigValueError(ValueError):
    """A config field out of its range; the message is one line naming the key, its value and what was expected."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _ints(lo: int, *, allow_none: bool = False, allow_empty: bool = True) -> Callable[[Any], bool]:
    def ok(v):
        if allow_none and v is None:
            return True
        try:
            items = list(v)
        except TypeError:
            return False
        return (allow_empty or bool(items)) and not isinstance(v, str) and all(_is_int(x) and x >= lo for x in items)
    return ok


# field -> (accepts(value), what is expected); "{f}" is the field's name. A rule keyed "group.field" wins over one
# keyed "field", which holds in every group (temperature of config.judge, config.star, config.sre, ...). The "all"
# or "none" value of a count is 0, as splits.experiment_data and benchmark.eval_sets read it; a negative count is refused.
_AT_LEAST_1 = (lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_NONE_OR_AT_LEAST_1 = (lambda v: v is None or (_is_int(v) and v >= 1), "None or an integer >= 1")
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{f: _AT_LEAST_1 for f in (
        "epochs", "batch_size", "accum_steps", "max_len", "checkpoint_every", "keep_checkpoints", "iterations",
        "parts", "samples", "seed_samples", "consistency_samples", "pairs_per_input", "chunk", "k", "n",
        "max_new_tokens", "max_batch")},
    "train_pairs": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = all training pairs)"),
    "held_out_per_subset": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = every held-out pair)"),
    "rewardbench_per_subset": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = no RewardBench set)"),
    "pointwise_eval": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = all)"),
    "per_subset": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = every pair)"),
    "margin": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "eval.bias": (lambda v: isinstance(v, bool), "true or false"),
    "eval.bias_pairs": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = every in-distribution pair)"),
    "eval.bias_attack_pairs": _NONE_OR_AT_LEAST_1,
    "eval.shared_dir": (lambda v: isinstance(v, str), "a directory path, or '' (no sharing)"),
    "seed": (_is_int, "an integer"),
    "limit": _NONE_OR_AT_LEAST_1,
    "max_answer_tokens": _NONE_OR_AT_LEAST_1,
    "max_prompt_tokens": _NONE_OR_AT_LEAST_1,
    "temperature": (lambda v: _is_real(v) and v >= 0, "a finite {f} >= 0 (0 = greedy)"),
    "top_p": (lambda v: _is_real(v) and 0 < v <= 1, "0 < {f} <= 1"),
    "learning_rate": (lambda v: _is_real(v) and v > 0, "a finite {f} > 0"),
    "sft_learning_rate": (lambda v: _is_real(v) and v > 0, "a finite {f} > 0"),
    "warmup_fraction": (lambda v: _is_real(v) and 0 <= v <= 1, "0 <= {f} <= 1"),
    "beta": (lambda v: v is None or (_is_real(v) and v > 0), "None (the loss's default) or a finite {f} > 0"),
    "weight_decay": (lambda v: _is_real(v) and v >= 0, "a finite {f} >= 0"),
    "max_grad_norm": (lambda v: _is_real(v) and v >= 0, "a finite {f} >= 0 (0 = no clipping)"),
    "held_out_fraction": (lambda v: _is_real(v) and 0 < v < 1, "0 < {f} < 1"),
    "invalid_score": (lambda v: _is_real(v) and 0 <= v <= 1, "0 <= {f} <= 1"),
    "alpha": (lambda v: _is_real(v) and 0 <= v <= 1, "0 <= {f} <= 1"),
    "reward_eps": (lambda v: _is_real(v) and 0 < v < 0.5, "0 < {f} < 0.5"),
    "device_memory_gib": (lambda v: _is_real(v) and v >= 0, "a finite {f} >= 0 (0 = what the device reports)"),
    "ks": (_ints(1, allow_empty=False), "a non-empty list of integers >= 1"),
    "buckets": (_ints(1), "a list of integers >= 1"),
    "inputs": (_ints(0), "a list of integers >= 0 (0 = the whole part)"),
    **{f"mesh.{axis}": (lambda v: _is_int(v) and (v >= 1 or v == -1), "an integer >= 1, or -1 (the devices left)")
       for axis in ("data", "fsdp", "model")},
}


def validate(c) -> None:
    """Checks every field of an experiment config (a ConfigDict or dict) that has a range: counts >= 1 (or 0 where
    0 documents "all"), 0 < top_p <= 1, temperature >= 0, a finite learning rate > 0, ... Raises
    ConfigValueError on the first bad field, one line naming it: `config.star.top_p=0.0: expected 0 < top_p <= 1`.
    Needs no model and no data: call it before the run directory records the config."""
    tree = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    for key, value in _leaves(tree, ""):
        field = key.rsplit(".", 1)[-1]
        rule = _RULES.get(key) or _RULES.get(field)
        if rule is not None and not rule[0](value):
            raise ConfigValueError(f"config.{key}={value!r}: expected {rule[1].format(f=field)}")


def _leaves(tree, prefix):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def from_config(cls, cfg, where: str, **overrides):
    """`cls(**cfg, **overrides)` for a dict or ml_collections.ConfigDict; tuples stay tuples (ConfigDicts give
    lists back); an unknown key raises ValueError naming `where` and the known fields."""
    d = {**dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg), **overrides}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown settings {unknown}; expected some of {sorted(fields)}")
    for k, v in d.items():
        if isinstance(v, list) and "tuple" in str(fields[k].type):
            d[k] = tuple(v)
    return cls(**d)
