"""Scoring a judge on preference benchmarks, shared by experiments (zero-shot llm_judge, STaR training runs) so
that every judge is evaluated on the same sets in the same way.

- `eval_sets(cfg_eval, seed)`: {name: records} from a preference file, or the bundled RewardBench / HH-RLHF
  files sampled per subset.
- `judge_configs(c)`: one validated `api.JudgeConfig` per method of an experiment config; raises `ConfigError`
  naming the config field, so a run fails before it loads a model.
- `evaluate(judge, records, seed=..., ks=..., judgments_path=...)`: judges every pair (A/B order balanced per
  subset), scores it (`evaluation.dataset_report`) and adds the first-position rate, the pairs whose
  conversation was cut to fit the context (`truncated`), the pairs that could not be judged at all (`skipped`:
  [{"id", "reason"}], `n_skipped`; they score `invalid_score`) and, when asked, writes one JSON line per pair.
- `category_table(name, report)`: a plain-text summary.

The experiment config `c` read here has `methods` (comma-separated), `judge` (JudgeConfig fields),
`per_method` ({method: overrides of `judge`}, optional) and `seed`; `cfg_eval` has `dataset`, `path`, `format`,
`per_subset` and `limit` (see experiments/configs/llm_judge.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Mapping, Sequence

import numpy as np

from genrm_jax import config_util, evaluation, methods
from genrm_jax.data import benchmarks, sources, splits
from genrm_jax.judge import api, prompts

# What a plain language model can judge with; "bt" and "pairrm" score with a trained scalar reward head.
ZERO_SHOT_METHODS = methods.zero_shot_judges()
HEAD_METHODS = tuple(m for m in api.METHODS if m not in ZERO_SHOT_METHODS)
DATASETS = ("rewardbench", "hh-rlhf")
RUBRIC_PROMPTS = ("pairwise", "pointwise")  # judges whose prompt holds a rubric (prompts.rubric_for each pair)


ConfigError = config_util.ConfigValueError  # a bad experiment config; the message names the field


def _get(cfg, key: str, default=None):
    """A field of a ConfigDict or a plain mapping (a missing field is `default`)."""
    try:
        return cfg[key]
    except (KeyError, AttributeError):
        return default


def _as_dict(cfg) -> dict:
    if cfg is None:
        return {}
    return dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)


# --------------------------------------------------------------------------------------------- config


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """"cot, genrm" or ["cot", "genrm"] -> ["cot", "genrm"] (blank entries dropped, order kept)."""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    return [m.strip() for m in items if m.strip()]


def judge_configs(c, *, with_head: bool = False) -> dict[str, api.JudgeConfig]:
    """{method: JudgeConfig} for every method in `c.methods`: `c.judge`, then `c.per_method[method]`, then the
    method and `c.seed`. Raises ConfigError naming the field: an unknown or empty method list, a method that
    needs a trained reward head (bt, pairrm) unless `with_head` (the caller has one), an unknown JudgeConfig
    field, or a value JudgeConfig rejects."""
    allowed = api.METHODS if with_head else ZERO_SHOT_METHODS
    methods = parse_methods(_get(c, "methods", "") or "")
    if not methods:
        raise ConfigError(f"config.methods: no method given; expected a comma-separated list of {', '.join(allowed)}")
    for m in methods:
        if m in HEAD_METHODS and not with_head:
            raise ConfigError(
                f"config.methods: method {m!r} scores pairs with a trained scalar reward head; zero-shot llm_judge "
                f"has none and cannot score with an untrained reward head (a Bradley-Terry experiment will train "
                f"one). Use {' or '.join(ZERO_SHOT_METHODS)}.")
        if m not in allowed:
            raise ConfigError(f"config.methods: unknown method {m!r}; expected one of {', '.join(allowed)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"config.methods: a method is listed twice in {','.join(methods)!s}")

    known = {f.name for f in dataclasses.fields(api.JudgeConfig)}
    base = _as_dict(_get(c, "judge"))
    per_method = _as_dict(_get(c, "per_method"))
    for key in base:
        if key not in known:
            raise ConfigError(f"config.judge.{key}: not a JudgeConfig field; known: {', '.join(sorted(known))}")
    for m, overrides in per_method.items():
        if m not in api.METHODS:
            raise ConfigError(f"config.per_method.{m}: not a method; expected one of {', '.join(api.METHODS)}")
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"config.per_method.{m}: expected a group of JudgeConfig fields, got {overrides!r}")
        for key in overrides:
            if key not in known:
                raise ConfigError(f"config.per_method.{m}.{key}: not a JudgeConfig field; known: "
                                  f"{', '.join(sorted(known))}")

    out = {}
    for m in methods:
        overrides = dict(per_method.get(m) or {})
        fields = {**base, **overrides, "method": m, "seed": _get(c, "seed", 0)}
        stop = fields.get("stop_strings", ())
        fields["stop_strings"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
        try:
            out[m] = api.JudgeConfig(**fields)
        except api.JudgeConfigError as e:
            where = f"config.per_method.{m}.{e.field}" if e.field in overrides else f"config.judge.{e.field}"
            if e.field == "seed":
                where = "config.seed"
            raise ConfigError(f"{where}: {e.problem} (method {m!r})") from None
    return out


CACHE_DTYPES = ("float32", "bfloat16", "float16")


def check_engine(c) -> None:
    """`c.model` and `c.engine` (max_batch, cache_dtype, share_prefix) of an experiment config; ConfigError naming
    the field."""
    if not c.model:
        raise ConfigError("config.model: empty; give a registered name, GGUF file or Hugging Face directory")
    if not isinstance(c.engine.max_batch, int) or c.engine.max_batch < 1:
        raise ConfigError(f"config.engine.max_batch: must be an integer >= 1, got {c.engine.max_batch!r}")
    if c.engine.cache_dtype not in CACHE_DTYPES:
        raise ConfigError(f"config.engine.cache_dtype: must be one of {', '.join(CACHE_DTYPES)}, got "
                          f"{c.engine.cache_dtype!r}")
    if not isinstance(c.engine.get("share_prefix"), bool):
        raise ConfigError(f"config.engine.share_prefix: must be true or false, got {c.engine.get('share_prefix')!r}")


# -------------------------------------------------------------------------------------------- data


def judge_config(group, *, where: str = "config.judge", **overrides) -> api.JudgeConfig:
    """One JudgeConfig from a config group (and overrides); ConfigError naming `where`.FIELD when it is bad."""
    known = {f.name for f in dataclasses.fields(api.JudgeConfig)}
    fields = {**_as_dict(group), **overrides}
    for key in fields:
        if key not in known:
            raise ConfigError(f"{where}.{key}: not a JudgeConfig field; known: {', '.join(sorted(known))}")
    stop = fields.get("stop_strings", ())
    fields["stop_strings"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
    try:
        return api.JudgeConfig(**fields)
    except api.JudgeConfigError as e:
        raise ConfigError(f"{where}.{e.field}: {e.problem}") from None


def eval_sets(cfg_eval, seed: int = 0, skipped: dict | None = None) -> dict[str, list[dict]]:
    """{name: records} to evaluate: the file `path` (format `format`, named after its base name), or the bundled
    `dataset` ("rewardbench" | "hh-rlhf") with at most `per_subset` pairs of each subset (0 = all). At most
    `limit` pairs per set. Bad values raise ConfigError naming the field; bad files sources.DataError naming
    file, line and field. Given a `skipped` dict, {name: [sources.Skipped]} of the rows each set's files could not
    give as pairs (for `evaluate`'s `data_skipped`)."""
    skipped = {} if skipped is None else skipped
    path, fmt = _get(cfg_eval, "path", "") or "", _get(cfg_eval, "format", "jsonl")
    dataset, limit = _get(cfg_eval, "dataset", "rewardbench"), _get(cfg_eval, "limit")
    per_subset = _get(cfg_eval, "per_subset", 0) or 0
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"config.eval.limit: must be unset (every pair) or an integer >= 1, got {limit!r}")
    if not isinstance(per_subset, int) or per_subset < 0:
        raise ConfigError(f"config.eval.per_subset: must be an integer >= 0 (0 = every pair), got {per_subset!r}")
    if path:
        if fmt not in sources.FORMATS + benchmarks.FORMATS:
            raise ConfigError(f"config.eval.format: unknown format {fmt!r} for {path}; expected one of "
                              f"{', '.join(sources.FORMATS + benchmarks.FORMATS)}")
        if not os.path.exists(path):
            raise ConfigError(f"config.eval.path: no such file: {path}")
        name = os.path.basename(path).split(".")[0]
        load = benchmarks.load if fmt in benchmarks.FORMATS else sources.load  # best-of-4 / 3x3-style rows
        recs = load(fmt, path, limit=limit, skipped=skipped.setdefault(name, []))
        if not recs:
            raise ConfigError(f"config.eval.path: {path} holds no preference pairs")
        return {name: recs}
    if dataset == "rewardbench":
        groups = {"rewardbench": sources.load("rewardbench", sources.REWARDBENCH,
                                              skipped=skipped.setdefault("rewardbench", []))}
    elif dataset == "hh-rlhf":
        groups = {"hh-rlhf": [r for split in sources.HH_RLHF_SPLITS
                              for r in sources.load("hh-rlhf", sources.hh_rlhf_path(split),
                                                    skipped=skipped.setdefault("hh-rlhf", []))]}
    else:
        raise ConfigError(f"config.eval.dataset: must be one of {', '.join(DATASETS)} (or set config.eval.path), "
                          f"got {dataset!r}")
    out = {}
    for name, recs in groups.items():
        if per_subset:
            recs = splits.stratified_sample(recs, per_subset, seed=seed)
        out[name] = recs[:limit] if limit is not None else recs
    return out


def check_ks(ks) -> tuple[int, ...]:
    """maj@k sizes as a tuple of positive integers; ConfigError naming config.eval.ks otherwise."""
    try:
        out = tuple(ks)
    except TypeError:
        out = None
    if not out or not all(isinstance(k, int) and k >= 1 for k in out):
        raise ConfigError(f"config.eval.ks: expected a tuple of integers >= 1, got {ks!r}")
    return out


# ---------------------------------------------------------------------------------------------- judging


def evaluate(judge, records: list[dict], *, seed: int = 0, ks: Sequence[int] = evaluation.MAJ_KS,
             judgments_path: str | None = None, progress: bool = True, data_skipped: Sequence = ()) -> dict:
    """Judge every pair of `records` (sources format) and score it.

    The chosen answer is shown as A for exactly half of each subset (`splits.a_is_chosen(records, seed)`), so a
    position-biased judge scores chance. Returns `evaluation.dataset_report` plus `first_position_rate` (how
    often a valid verdict picks the answer shown first: 0.5 unbiased, 1.0 always "A"), `truncated` (pairs whose
    conversation was cut from the left to fit the model's context), `skipped` ([{"id", "reason"}] of pairs that
    could not be judged; they score `invalid_score`; then the rows of the set's files that could not be pairs,
    `data_skipped` ([sources.Skipped] from `eval_sets`, counted before any sampling): [{"source", "reason"}]),
    `n_skipped` (both) and `seconds`. With `judgments_path`, writes
    one JSON line per pair: id, subset, source, a_is_chosen, p_chosen, votes_chosen, rationales, truncated,
    skipped (the reason, or null)."""
    t = time.time()
    a_is_chosen = splits.a_is_chosen(records, seed=seed)
    ans_a = [r["chosen"] if f else r["rejected"] for r, f in zip(records, a_is_chosen)]
    ans_b = [r["rejected"] if f else r["chosen"] for r, f in zip(records, a_is_chosen)]
    rubrics = {"rubrics": [prompts.rubric_for(r) for r in records]} if judge.config.prompt in RUBRIC_PROMPTS else {}
    j = judge.compare([r["prompt"] for r in records], ans_a, ans_b, progress=progress, **rubrics)
    p_chosen, votes = evaluation.to_chosen(j.p_a, j.votes, a_is_chosen)
    rep = evaluation.dataset_report(records, p_chosen, votes, invalid_score=judge.config.invalid_score,
                                    ks=tuple(check_ks(ks)))
    first = (~j.swapped)[:, :, None].astype(np.int8)  # the caller-label vote that means "the first shown"
    valid = j.votes != api.INVALID
    rep["first_position_rate"] = float(np.mean((j.votes == first)[valid])) if valid.any() else None
    truncated = np.asarray(j.truncated if len(j.truncated) == len(records) else np.zeros(len(records)), bool)
    rep["truncated"] = int(truncated.sum())
    rep["skipped"] = ([{"id": records[i]["id"], "reason": reason} for i, reason in sorted(j.skipped.items())]
                      + [{"source": s.source, "reason": s.reason} for s in data_skipped])
    rep["n_skipped"] = len(rep["skipped"])
    rep["seconds"] = round(time.time() - t, 1)
    if judgments_path:
        with open(judgments_path, "w") as f:
            for i, r in enumerate(records):
                f.write(json.dumps({
                    "id": r["id"], "subset": r["subset"], "source": r["source"], "a_is_chosen": bool(a_is_chosen[i]),
                    "p_chosen": float(p_chosen[i]), "votes_chosen": votes[i].tolist(), "rationales": j.rationales[i],
                    "truncated": bool(truncated[i]), "skipped": j.skipped.get(i)}, allow_nan=False) + "\n")
    return rep


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def category_table(name: str, rep: dict) -> str:
    """Accuracy per category (and RewardBench section), with the invalid rate and skipped / truncated pairs."""
    extra = "".join(f", {rep[k]} {label}" for k, label in (("n_skipped", "skipped"), ("truncated", "truncated"))
                    if rep.get(k))
    rows = [f"{name}: accuracy {_fmt(rep['accuracy'], '.3f')} (n={rep['n']}, invalid "
            f"{_fmt(rep['invalid_rate'], '.1%')}{extra})",
            f"  {'category':<22}{'n':>6}{'accuracy':>10}"]
    rows += [f"  {k:<22}{v['n']:>6}{_fmt(v['accuracy'], '.3f'):>10}" for k, v in rep["categories"].items()]
    for k, v in rep.get("sections", {}).items():
        rows.append(f"  section {k:<14}{'':>6}{_fmt(v, '.3f'):>10}")
    return "\n".join(rows)
