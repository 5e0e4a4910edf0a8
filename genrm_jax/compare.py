"""Is judge A better than judge B? Compare two evaluations of the same pairs from their per-pair judgments.

    python -m genrm_jax.compare RUN_A RUN_B [--set NAME] [--verdicts] [--json]

RUN_A and RUN_B each name one evaluation:
- a run directory of a training experiment: its last evaluation stage (<dir>/eval/eval_<N>/, highest N);
- `DIR:STAGE`: that stage of a run (e.g. `runs/star_dpo:eval_0` against `runs/star_dpo:eval_3`);
- a directory of judgment files (an eval stage directory, or an llm_judge run directory);
- one judgments file (`judgments-<set>.jsonl`).
Sets of the same name are compared (`--set` picks one); when each side has a single set they are compared
whatever their names. Pairs are matched by subset and id; pairs only one side judged are counted and left out.

For each set: both accuracies, the difference A - B with a paired bootstrap 95% interval, the discordant pairs
(those one side scores higher) and the exact McNemar p-value, a sign test when there are ties
(evaluation.paired_comparison), printed as a table or, with --json, as JSON.
--verdicts compares verdict scores (each verdict counted; evaluation.verdict_scores) instead of P(chosen).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

from genrm_jax import evaluation

_JUDGMENTS = re.compile(r"^judgments-(.+)\.jsonl$")


def _stage_number(path: str) -> int:
    m = re.fullmatch(r"eval_(\d+)", os.path.basename(path))
    return int(m.group(1)) if m else -1


def judgment_files(spec: str) -> dict[str, str]:
    """{set name: judgments file} of one evaluation named as in the module doc; ValueError says what is missing."""
    path, stage = spec, None
    if not os.path.exists(spec) and ":" in spec:
        path, stage = spec.rsplit(":", 1)
    if os.path.isfile(path):
        m = _JUDGMENTS.match(os.path.basename(path))
        return {m.group(1) if m else os.path.basename(path): path}
    if not os.path.isdir(path):
        raise ValueError(f"{spec}: no such run directory, stage or judgments file")
    if stage is not None:
        folder = os.path.join(path, "eval", stage)
        if not os.path.isdir(folder):
            have = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "eval", "*")))
            raise ValueError(f"{spec}: the run has no evaluation stage {stage!r} (it has: {', '.join(have) or 'none'})")
    else:
        stages = [p for p in glob.glob(os.path.join(path, "eval", "eval_*")) if _stage_number(p) >= 0]
        folder = max(stages, key=_stage_number) if stages else path
    files = {m.group(1): os.path.join(folder, f) for f in sorted(os.listdir(folder))
             if (m := _JUDGMENTS.match(f))}
    if not files:
        raise ValueError(f"{spec}: no per-pair judgments (judgments-<set>.jsonl) in {folder}")
    return files


def compare(spec_a: str, spec_b: str, *, set_name: str | None = None, n_boot: int = 10_000, seed: int = 0,
            verdicts: bool = False) -> dict[str, dict]:
    """{set: evaluation.compare_judgments(A, B) plus the two files} for the sets both evaluations share."""
    fa, fb = judgment_files(spec_a), judgment_files(spec_b)
    if set_name is not None:
        for spec, files in ((spec_a, fa), (spec_b, fb)):
            if set_name not in files:
                raise ValueError(f"{spec}: no set {set_name!r} (it has: {', '.join(files)})")
        pairs = [(set_name, fa[set_name], fb[set_name])]
    else:
        pairs = [(name, fa[name], fb[name]) for name in fa if name in fb]
        if not pairs and len(fa) == len(fb) == 1:
            (na, pa), (nb, pb) = next(iter(fa.items())), next(iter(fb.items()))
            pairs = [(na if na == nb else f"{na} vs {nb}", pa, pb)]
        if not pairs:
            raise ValueError(f"no set in common: {spec_a} has {', '.join(fa)}; {spec_b} has {', '.join(fb)} "
                             f"(choose one with --set)")
    return {name: {**evaluation.compare_judgments(evaluation.read_judgments(pa, verdicts=verdicts),
                                                   evaluation.read_judgments(pb, verdicts=verdicts),
                                                   n_boot=n_boot, seed=seed, verdicts=verdicts),
                   "file_a": pa, "file_b": pb}
            for name, pa, pb in pairs}


def table(results: dict[str, dict]) -> str:
    lines = ["| set | n | acc A | acc B | A - B | 95% CI | A only | B only | McNemar p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        mark = " *" if r["significant"] else ""
        lines.append(f"| {name} | {r['n']} | {r['accuracy_a']:.3f} | {r['accuracy_b']:.3f} | "
                     f"{r['difference']:+.3f}{mark} | [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {r['a_only']} | "
                     f"{r['b_only']} | {r['mcnemar_p']:.3g} |")
    lines.append(f"\n* significant at {evaluation.SIGNIFICANCE_LEVEL} (exact McNemar / sign test on the discordant "
                 "pairs)")
    skipped = {n: (r["only_a"], r["only_b"]) for n, r in results.items() if r["only_a"] or r["only_b"]}
    for n, (oa, ob) in skipped.items():
        lines.append(f"{n}: {oa} pairs judged only by A and {ob} only by B were left out")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m genrm_jax.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_a", help="run directory, DIR:STAGE, directory of judgment files, or judgments file")
    ap.add_argument("run_b", help="the same for judge B")
    ap.add_argument("--set", dest="set_name", default=None, help="compare only this evaluation set")
    ap.add_argument("--verdicts", action="store_true", help="compare verdict scores (each verdict counted)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = ap.parse_args(argv)
    try:
        results = compare(args.run_a, args.run_b, set_name=args.set_name, n_boot=args.n_boot, seed=args.seed,
                          verdicts=args.verdicts)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
