r"""Zero-shot LLM-as-judge baseline: the embedded model judges preference pairs; accuracy, RewardBench sections,
maj@k, position consistency and invalid rate go to DIR/report.json, report.md and majk.png.

  python -m experiments.llm_judge --workdir runs/llm_judge                      # stratified RewardBench sample
  python -m experiments.llm_judge --workdir runs/full --config=experiments/configs/llm_judge.py:full
  python -m experiments.llm_judge --workdir runs/x --config.eval.path=pairs.jsonl --config.eval.limit=100

Per-pair judgments (verdicts and rationales) are written to DIR/judgments.jsonl for inspection.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from genrm_jax import evaluation
from genrm_jax.data import sources, splits
from genrm_jax.judge import api

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "llm_judge.py"),
    "Experiment config (file[:preset]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory for report.json, report.md, majk.png.")


def datasets(c) -> dict[str, list[dict]]:
    """{name: records} to evaluate: a given file, or the bundled RewardBench / HH-RLHF files sampled by subset."""
    limit = c.eval.limit
    if c.eval.path:
        name = os.path.basename(c.eval.path).split(".")[0]
        return {name: sources.load(c.eval.format, c.eval.path, limit=limit)}
    if c.eval.dataset == "rewardbench":
        groups = {"rewardbench": sources.load("rewardbench", sources.REWARDBENCH)}
    elif c.eval.dataset == "hh-rlhf":
        groups = {"hh-rlhf": [r for s in sources.HH_RLHF_SPLITS for r in sources.load("hh-rlhf", sources.hh_rlhf_path(s))]}
    else:
        raise ValueError(f"config.eval.dataset must be 'rewardbench' or 'hh-rlhf', got {c.eval.dataset!r}")
    out = {}
    for name, recs in groups.items():
        if c.eval.per_subset:
            recs = splits.stratified_sample(recs, c.eval.per_subset, seed=c.seed)
        out[name] = recs[:limit] if limit is not None else recs
    return out


def category_table(name: str, rep: dict) -> str:
    rows = [f"{name}: accuracy {rep['accuracy']:.3f} (n={rep['n']}, invalid {rep['invalid_rate']:.1%})",
            f"  {'category':<22}{'n':>6}{'accuracy':>10}"]
    rows += [f"  {k:<22}{v['n']:>6}{v['accuracy']:>10.3f}" for k, v in rep["categories"].items()]
    for k, v in rep.get("sections", {}).items():
        rows.append(f"  section {k:<14}{'':>6}{v:>10.3f}")
    return "\n".join(rows)


def evaluate(judge, recs: list[dict], c, judgments_path: str) -> dict:
    """Judge every pair (A/B order balanced per subset), score it, and dump per-pair judgments."""
    t = time.time()
    a_is_chosen = splits.a_is_chosen(recs, seed=c.seed)  # balanced, so a position-biased judge scores 0.5
    ans_a = [r["chosen"] if f else r["rejected"] for r, f in zip(recs, a_is_chosen)]
    ans_b = [r["rejected"] if f else r["chosen"] for r, f in zip(recs, a_is_chosen)]
    j = judge.compare([r["prompt"] for r in recs], ans_a, ans_b, progress=True)
    p_chosen, votes = evaluation.to_chosen(j.p_a, j.votes, a_is_chosen)
    rep = evaluation.dataset_report(recs, p_chosen, votes, invalid_score=judge.config.invalid_score,
                                    ks=tuple(c.eval.ks))
    # How often a valid verdict picks the answer shown first: 0.5 is unbiased, 1.0 always says "A".
    first = (~j.swapped)[:, :, None].astype(np.int8)  # the caller-label vote that means "the first shown"
    valid = j.votes != api.INVALID
    rep["first_position_rate"] = float(np.mean((j.votes == first)[valid])) if valid.any() else None
    rep["seconds"] = round(time.time() - t, 1)
    with open(judgments_path, "w") as f:
        for i, r in enumerate(recs):
            f.write(json.dumps({"id": r["id"], "subset": r["subset"], "source": r["source"],
                                "a_is_chosen": bool(a_is_chosen[i]), "p_chosen": float(p_chosen[i]),
                                "votes_chosen": votes[i].tolist(), "rationales": j.rationales[i]}) + "\n")
    return rep


def main(argv):
    del argv
    c, workdir = _CONFIG.value, _WORKDIR.value
    if not workdir:
        raise app.UsageError("--workdir is required")
    from genrm_jax.io import load_model
    from genrm_jax.sampling import Engine

    t0 = time.time()
    data = datasets(c)
    model = load_model(c.model)
    engine = Engine(model, max_batch=c.engine.max_batch, cache_dtype=c.engine.cache_dtype)
    logging.info("model %s loaded in %.1fs", model.path, time.time() - t0)

    reports, judges = {}, {}
    os.makedirs(workdir, exist_ok=True)
    for method in [m.strip() for m in c.methods.split(",") if m.strip()]:
        overrides = c.per_method[method].to_dict() if method in c.per_method else {}
        fields = {**c.judge.to_dict(), **overrides, "method": method, "seed": c.seed}
        jc = api.JudgeConfig(**{**fields, "stop_strings": tuple(fields["stop_strings"])})
        judges[method] = dataclasses.asdict(jc)
        judge = api.Judge(model, jc, engine=engine)
        for name, recs in data.items():
            key = f"{name}/{method}"
            reports[key] = evaluate(judge, recs, c, os.path.join(workdir, f"judgments-{name}-{method}.jsonl"))
            print(category_table(key, reports[key]), flush=True)

    meta = {"model": c.model, "preset": c.preset, "judges": judges, "wall_seconds": round(time.time() - t0, 1)}
    paths = evaluation.write_report(workdir, reports, meta)
    print(f"wall time {meta['wall_seconds']}s; wrote {', '.join(paths.values())}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
