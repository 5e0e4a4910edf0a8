"""Scoring judgments of preference pairs: accuracy, RewardBench sections, maj@k, position consistency, reports.

Conventions: a vote is 1 (chosen judged better), 0 (rejected judged better) or -1 (no verdict). An example's
score is 1 / 0 when the judge's P(chosen) is above / below 1/2 and `invalid_score` (RewardBench: 0.5, a tie)
when it is exactly 1/2, which is what an invalid or split judgment gives. Its *verdict score* is the mean of its
votes (an invalid vote counts `invalid_score`): a pair judged in both orders whose verdict follows the position,
not the answers, scores 1/2 — RewardBench's rule for generative judges (a disagreement across orders is a tie).
The two differ for a position-locked judge: P(chosen) averaged over the orders is then 1/2 plus a margin of a
few thousandths, whose sign decides the accuracy while every verdict is a tie (docs/learning.md).

Reports are strict JSON: a value that is undefined (the confidence interval of a single example) is None and is
written as null, never as NaN.
"""
from __future__ import annotations

import collections
import functools
import json
import math
import os
from typing import Sequence

import numpy as np

from genrm_jax.runs import strict_json, write_text_atomic

# RewardBench v1 sections (allenai/reward-bench, rewardbench/constants.py): a section score is the mean of its
# subsets' accuracies weighted by these official example counts. math-prm (447 examples) is weighted to 984 so
# that it counts as much as the six hep-* code subsets together.
SECTIONS = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
    "mt-bench-med": 40, "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46, "refusals-dangerous": 100,
    "refusals-offensive": 100, "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136,
    "math-prm": 984, "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164,
    "hep-rust": 164,
}
MAJ_KS = (1, 2, 4, 8, 16, 32)
Z95 = 1.959963984540054


# ------------------------------------------------------------------------------------------------ scores


def example_scores(p_chosen: np.ndarray, invalid_score: float = 0.5) -> np.ndarray:
    p = np.asarray(p_chosen, np.float64)
    return np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, invalid_score))


def verdict_scores(votes: np.ndarray, invalid_score: float = 0.5) -> np.ndarray:
    """Per-example mean of its votes ([N, ...] of 1/0/-1; -1 counts `invalid_score`): [N] in [0, 1]."""
    v = np.asarray(votes).reshape(len(votes), -1)
    return np.where(v == -1, invalid_score, v).astype(np.float64).mean(1)


def accuracy_by(scores: np.ndarray, keys: Sequence[str]) -> dict[str, dict]:
    """{key: {"accuracy", "n"}} in first-seen order."""
    groups = collections.defaultdict(list)
    for s, k in zip(scores, keys):
        groups[k].append(s)
    return {k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in groups.items()}


def section_scores(subset_accuracy: dict[str, float]) -> dict[str, float]:
    """RewardBench section scores from per-subset accuracies, and "Score", their mean.

    Sections with none of their subsets present are left out; a partly present section is weighted over the
    subsets it has (a stratified sample has them all).
    """
    out = {}
    for section, subsets in SECTIONS.items():
        have = [s for s in subsets if s in subset_accuracy]
        if have:
            w = np.array([EXAMPLE_COUNTS[s] for s in have], np.float64)
            out[section] = float(np.dot(w, [subset_accuracy[s] for s in have]) / w.sum())
    if out:
        out["Score"] = float(np.mean(list(out.values())))
    return out


# ---------------------------------------------------------------------------------------------- maj@k


@functools.lru_cache(maxsize=None)
def _maj_expectation(chosen: int, rejected: int, invalid: int, k: int, invalid_score: float) -> float:
    """E[majority-vote score] over k of the (chosen + rejected + invalid) votes drawn without replacement.

    Multivariate hypergeometric over how many of each kind are drawn; invalid votes abstain, and a tie (or
    no valid vote) scores `invalid_score`.
    """
    total = chosen + rejected + invalid
    norm = math.comb(total, k)
    e = 0.0
    for x in range(min(chosen, k) + 1):
        for y in range(min(rejected, k - x) + 1):
            z = k - x - y
            if z > invalid:
                continue
            ways = math.comb(chosen, x) * math.comb(rejected, y) * math.comb(invalid, z)
            e += ways * (1.0 if x > y else 0.0 if x < y else invalid_score)
    return e / norm


def maj_at_k(votes: np.ndarray, k: int, invalid_score: float = 0.5) -> np.ndarray:
    """Per-example expected maj@k [N] from S >= k sampled votes per example ([N, S], 1/0/-1).

    The unbiased estimate of the accuracy of a majority vote over k fresh samples, from one set of S samples:
    the average over all C(S, k) subsets, computed in closed form.
    """
    votes = np.asarray(votes).reshape(len(votes), -1)
    if not 1 <= k <= votes.shape[1]:
        raise ValueError(f"k={k} needs 1 <= k <= {votes.shape[1]} samples per example")
    c, r = (votes == 1).sum(1), (votes == 0).sum(1)
    u = votes.shape[1] - c - r
    return np.array([_maj_expectation(int(a), int(b), int(d), k, float(invalid_score)) for a, b, d in zip(c, r, u)])


def mean_ci(x: np.ndarray) -> dict:
    """Mean with a normal-approximation 95% confidence interval over examples, clipped to [0, 1].

    Undefined values are None: the interval of fewer than two examples, the mean of none."""
    x = np.asarray(x, np.float64)
    m = float(x.mean()) if len(x) else None
    if len(x) < 2:
        return {"accuracy": m, "lo": None, "hi": None, "n": int(len(x))}
    half = Z95 * float(x.std(ddof=1)) / math.sqrt(len(x))
    return {"accuracy": m, "lo": max(0.0, m - half), "hi": min(1.0, m + half), "n": int(len(x))}


def maj_curve(votes: np.ndarray, ks: Sequence[int] = MAJ_KS, invalid_score: float = 0.5) -> dict[int, dict]:
    """{k: mean_ci(maj@k)} for every k in `ks` that the number of samples allows."""
    s = np.asarray(votes).reshape(len(votes), -1).shape[1]
    return {k: mean_ci(maj_at_k(votes, k, invalid_score)) for k in ks if k <= s}


# ------------------------------------------------------------------------------------ position, invalid


def position_consistency(votes: np.ndarray) -> float | None:
    """Share of examples judged the same way in both presentations ([N, 2, k] votes in the caller's labels;
    per order the first sample's verdict). Examples with an invalid verdict in either order are inconsistent."""
    votes = np.asarray(votes)
    if votes.ndim != 3 or votes.shape[1] != 2 or len(votes) == 0:
        return None
    a, b = votes[:, 0, 0], votes[:, 1, 0]
    return float(np.mean((a == b) & (a != -1)))


def invalid_rate(votes: np.ndarray) -> float:
    votes = np.asarray(votes)
    return float(np.mean(votes == -1)) if votes.size else 0.0


# ------------------------------------------------------------------------------------------------ report


def dataset_report(records: Sequence[dict], p_chosen: np.ndarray, votes: np.ndarray, *,
                   invalid_score: float = 0.5, ks: Sequence[int] = MAJ_KS) -> dict:
    """Everything for one dataset. `votes`: [N, orders, k] in chosen/rejected terms (1/0/-1)."""
    if len(records) != len(p_chosen) or len(records) != len(votes):
        raise ValueError(f"{len(records)} records, {len(p_chosen)} probabilities, {len(votes)} vote rows")
    if not len(records):
        raise ValueError("no records to score: an accuracy over 0 examples is undefined")
    scores = example_scores(p_chosen, invalid_score)
    subsets = accuracy_by(scores, [r["subset"] for r in records])
    ci = mean_ci(scores)
    report = {
        "accuracy": float(scores.mean()),
        "accuracy_ci95": [ci["lo"], ci["hi"]] if len(scores) > 1 else None,
        "verdict_accuracy": float(verdict_scores(votes, invalid_score).mean()),
        "n": len(records),
        "invalid_rate": invalid_rate(votes),
        "subsets": subsets,
        "categories": accuracy_by(scores, [r["category"] for r in records]),
    }
    sections = section_scores({k: v["accuracy"] for k, v in subsets.items() if k in EXAMPLE_COUNTS})
    if sections:
        report["sections"] = sections
    if np.asarray(votes).shape[-1] > 1:  # sampled judgments (k > 1 per order): all samples are pooled
        report["maj_at_k"] = {str(k): v for k, v in maj_curve(votes, ks, invalid_score).items()}
    consistency = position_consistency(votes)
    if consistency is not None:
        report["position_consistency"] = consistency
    return report


def _num(x) -> str:
    """x to 4 decimals; "n/a" for an undefined value (None or NaN)."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"


def markdown(reports: dict[str, dict], meta: dict | None = None) -> str:
    lines = ["# Evaluation report", ""]
    for key, value in (meta or {}).items():
        lines.append(f"- {key}: `{json.dumps(strict_json(value))}`" if isinstance(value, (dict, list))
                     else f"- {key}: {value}")
    for name, rep in reports.items():
        ci = rep.get("accuracy_ci95")
        extras = [f"invalid rate {_num(rep['invalid_rate'])}"]
        if rep.get("verdict_accuracy") is not None:
            extras.insert(0, f"verdict accuracy {_num(rep['verdict_accuracy'])}")
        if "position_consistency" in rep:
            extras.append(f"position consistency {_num(rep['position_consistency'])}")
        if rep.get("first_position_rate") is not None:
            extras.append(f"first-position rate {_num(rep['first_position_rate'])}")
        lines += ["", f"## {name}", "",
                  f"accuracy **{_num(rep['accuracy'])}**" + (f" (95% CI [{_num(ci[0])}, {_num(ci[1])}])" if ci else "")
                  + f" over n = {rep['n']}; " + "; ".join(extras), ""]
        if "sections" in rep:
            lines += ["| section | score |", "|---|---|"]
            lines += [f"| {k} | {_num(v)} |" for k, v in rep["sections"].items()] + [""]
        lines += ["| category | n | accuracy |", "|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {_num(v['accuracy'])} |" for k, v in rep["categories"].items()] + [""]
        lines += ["| subset | n | accuracy |", "|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {_num(v['accuracy'])} |" for k, v in rep["subsets"].items()]
        if "maj_at_k" in rep:
            lines += ["", "| k | maj@k | 95% CI |", "|---|---|---|"]
            lines += [f"| {k} | {_num(v['accuracy'])} | [{_num(v['lo'])}, {_num(v['hi'])}] |"
                      for k, v in rep["maj_at_k"].items()]
    return "\n".join(lines) + "\n"


def plot_maj(reports: dict[str, dict], path: str) -> bool:
    """maj@k curves with 95% CIs, one line per dataset; False (nothing written) when none has maj@k."""
    curves = {n: r["maj_at_k"] for n, r in reports.items() if len(r.get("maj_at_k", {})) > 1}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ks = [int(k) for k in curve]
        # None (an undefined interval) becomes NaN, which matplotlib leaves out
        acc = np.array([v["accuracy"] for v in curve.values()], np.float64)
        lo = np.array([v["lo"] for v in curve.values()], np.float64)
        hi = np.array([v["hi"] for v in curve.values()], np.float64)
        ax.plot(ks, acc, marker="o", label=name)
        ax.fill_between(ks, lo, hi, alpha=0.2)
    ax.set_xscale("log", base=2)
    all_ks = sorted({int(k) for curve in curves.values() for k in curve})
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.set_xlabel("k (judgments per pair, majority vote)")
    ax.set_ylabel("accuracy")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_title("maj@k with 95% CI")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(workdir: str, reports: dict[str, dict], meta: dict | None = None) -> dict[str, str]:
    """report.json, report.md and (when there are maj@k curves) majk.png in `workdir`; returns their paths.

    report.json is strict JSON (`json.loads` parses it with any parser): undefined values are null, never NaN.
    """
    os.makedirs(workdir, exist_ok=True)
    paths = {"json": os.path.join(workdir, "report.json"), "md": os.path.join(workdir, "report.md")}
    text = json.dumps(strict_json({"meta": meta or {}, "datasets": reports}), indent=2, allow_nan=False)
    write_text_atomic(paths["json"], text)  # a failure leaves neither half a report nor a temporary file
    write_text_atomic(paths["md"], markdown(reports, meta))
    png = os.path.join(workdir, "majk.png")
    if plot_maj(reports, png):
        paths["png"] = png
    return paths


def to_chosen(p_a: np.ndarray, votes: np.ndarray, a_is_chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P(chosen better), votes as 1 chosen / 0 rejected / -1 invalid) from a judgment in A/B labels."""
    a_is_chosen = np.asarray(a_is_chosen, bool)
    p = np.where(a_is_chosen, p_a, 1.0 - np.asarray(p_a, np.float64))
    v = np.asarray(votes)
    flip = ~a_is_chosen.reshape((-1,) + (1,) * (v.ndim - 1))
    return p, np.where((v != -1) & flip, 1 - v, v).astype(np.int8)


# ------------------------------------------------------------------------------------------- pointwise


def pointwise_report(pred: Sequence[float | None], gold: Sequence[int]) -> dict:
    """Scores 1-5 against gold scores: exact-score accuracy, mean absolute error and Pearson correlation over
    the scored items (`unscored`: items with no score), and the histogram of rounded (predicted - gold),
    -4..4 (Trivedi et al., Figure 5). Pearson is None when either side is constant."""
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predicted scores for {len(gold)} gold scores")
    pairs = [(float(p), float(g)) for p, g in zip(pred, gold) if p is not None]
    out = {"n": len(gold), "unscored": len(gold) - len(pairs)}
    if not pairs:
        return {**out, "exact": None, "mae": None, "pearson": None, "histogram": {}}
    p, g = np.array(pairs).T
    pearson = float(np.corrcoef(p, g)[0, 1]) if p.std() > 0 and g.std() > 0 else None
    diff = np.rint(p - g).astype(int)
    return {**out, "exact": float(np.mean(np.rint(p) == g)), "mae": float(np.mean(np.abs(p - g))),
            "pearson": pearson, "histogram": {str(d): int((diff == d).sum()) for d in range(-4, 5)}}


# ------------------------------------------------------------------------------------------ significance
# Two judges on the same pairs: is one better? Both tests pair each example with itself, which is far more
# powerful than comparing two independent confidence intervals (the judges' errors are correlated).

SIGNIFICANCE_LEVEL = 0.01  # what reports mark as significant


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: `a_only` examples judge A got right and judge B
    wrong, `b_only` the reverse. Under H0 each discordant pair is a fair coin, so p = min(1, 2 P(X <= min)),
    X ~ Binomial(a_only + b_only, 1/2), computed exactly with integers (1 when there is no discordant pair)."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_only}, {b_only}")
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired_bootstrap_ci(scores_a: np.ndarray, scores_b: np.ndarray, *, n_boot: int = 10_000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of mean(scores_a - scores_b) over `n_boot` resamples of the examples (with replacement,
    the same examples for both judges). Per-example differences take few values (scores are 0, 1/2 or 1), so a
    resample is drawn as the multinomial counts of those values: exact, and cheap for any number of examples."""
    d = np.asarray(scores_a, np.float64) - np.asarray(scores_b, np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"paired_bootstrap_ci: expected two equal-length 1-D score arrays, got {len(d)} differences")
    values, counts = np.unique(d, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(len(d), counts / len(d), size=n_boot)
    means = draws @ values / len(d)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_comparison(scores_a: np.ndarray, scores_b: np.ndarray, *, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Judge A against judge B on the same examples (per-example scores in [0, 1]: 0 / 1 right or wrong, 1/2 a
    tie, other fractions for verdict scores over k samples; in the same order): {"n", "accuracy_a",
    "accuracy_b", "difference" (a - b), "ci95" (paired bootstrap), "a_only", "b_only" (discordant examples: those
    A scores higher than B, and the reverse), "mcnemar_p" (exact, two-sided), "significant" (p <
    SIGNIFICANCE_LEVEL)}.

    With right / wrong scores the discordant examples are McNemar's (right for one judge only); with ties the test
    is its generalisation, the exact sign test over the examples whose scores differ, so that a tie becoming wrong
    counts against A as a tie becoming right counts for it (counting only "right", above 1/2, missed the first and
    could call a change significant whose mean difference was nil)."""
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_comparison: score arrays of shapes {a.shape} and {b.shape}; expected one equal "
                         f"1-D shape (the same examples in the same order)")
    if not len(a):
        raise ValueError("paired_comparison: no examples to compare")
    a_only, b_only = int(np.sum(a > b)), int(np.sum(b > a))
    p = mcnemar_exact(a_only, b_only)
    lo, hi = paired_bootstrap_ci(a, b, n_boot=n_boot, seed=seed)
    return {"n": int(len(a)), "accuracy_a": float(a.mean()), "accuracy_b": float(b.mean()),
            "difference": float(a.mean() - b.mean()), "ci95": [lo, hi], "a_only": a_only, "b_only": b_only,
            "mcnemar_p": p, "significant": bool(p < SIGNIFICANCE_LEVEL)}


def read_judgments(path: str, *, verdicts: bool = False, invalid_score: float = 0.5) -> dict[str, float]:
    """{"<subset>/<id>": p_chosen} from a per-pair judgments file (judge/benchmark.evaluate's `judgments_path`:
    one JSON line per pair with `id`, `subset`, `p_chosen`, `votes_chosen`); with `verdicts`, the pair's verdict
    score (`verdict_scores` of its votes) instead. A line without them raises naming file and line."""
    field = "votes_chosen" if verdicts else "p_chosen"
    out = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, p = f"{row['subset']}/{row['id']}", row[field]
                if verdicts:
                    p = float(verdict_scores(np.asarray([p]), invalid_score)[0])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: not a judgment line with id, subset and {field} ({e})") from None
            if key in out:
                raise ValueError(f"{path}:{lineno}: pair {key} judged twice")
            out[key] = float(p) if p is not None else 0.5
    return out


def compare_judgments(a: dict[str, float], b: dict[str, float], *, invalid_score: float = 0.5,
                      n_boot: int = 10_000, seed: int = 0, verdicts: bool = False) -> dict:
    """`paired_comparison` of two {pair key: p_chosen} maps over the pairs both judged (in sorted key order), plus
    "only_a" / "only_b": how many pairs one side has and the other lacks (left out of the comparison). With
    `verdicts` the maps hold verdict scores (read_judgments(..., verdicts=True)), compared as they are."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ValueError(f"no pair in common ({len(a)} and {len(b)} judged pairs): not the same evaluation set")
    sa, sb = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    if not verdicts:
        sa, sb = example_scores(sa, invalid_score), example_scores(sb, invalid_score)
    return {**paired_comparison(sa, sb, n_boot=n_boot, seed=seed), "only_a": len(set(a) - set(b)),
            "only_b": len(set(b) - set(a))}
