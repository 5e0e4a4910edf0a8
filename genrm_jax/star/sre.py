"""Self-Rationalization (Trivedi et al., 2024): a judge improves its own rationales by iterative DPO.

    training inputs are split (seeded) into 1 + `iterations` disjoint parts;
    seed  J_SFT: on part 0, Rationalizer-style rationales (sampled with the gold label or score as a hint,
          kept when correct; or the data's own feedback, when it has some) train a pointwise and a pairwise judge
          by SFT from the base model, merged linearly θ = α·θ_point + (1 − α)·θ_pair (merge.py), or one
          multi-task SFT on both (`seed_mode="multitask"`);
    iteration t: the current judge writes `samples` judgments per input of part t (temperature 1.0), pointwise
          (each answer under its rubric) and pairwise (half in each answer order); preference pairs are selected
          (star/selection.py `sre_pairs`: correct-answer with a margin, majority vote, or a meta-judge's ranking) and
          DPO trains the judge from its current weights, the reference being the judge at the start of t;
    baselines: self-consistency (J_SFT, majority over `consistency_samples` judgments) and best-of-N rejection
          sampling SFT (J_SFT's first correct judgment per input of iteration 1's samples, SFT from J_SFT).
    Every judge is evaluated on the held-out sets as a pairwise judge and as a pointwise one ranking the two
    answers by score (ties 0.5), plus exact / MAE / Pearson on a gold-scored pointwise set when there is one.

Offline, with only preference pairs (HH-RLHF), the pointwise task is built from pairs (star/judgments.py): each
answer is judged under the rubric of its pair's category, and a pair of scores is correct when it orders the two
answers as the human label does. Outputs follow the STaR loop's run directory: samples/, train/, eval/, export/.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from genrm_jax import config_util, evaluation, finetune, merge, methods, report, runs
from genrm_jax.data import splits
from genrm_jax.data.splits import IN_DISTRIBUTION, OUT_OF_DISTRIBUTION
from genrm_jax.io import load_model
from genrm_jax.judge import api, benchmark, pointwise, prompts
from genrm_jax.sampling import Engine
from genrm_jax.star import judgments as sampling
from genrm_jax.star import selection

TASKS = ("pointwise", "pairwise")
ZERO_SHOT = "zero-shot"  # the report rows' method of the untrained judges (stages eval_0_<task>)
BASELINES = ("self_consistency", "best_of_n")


@dataclasses.dataclass(frozen=True)
class SreConfig:
    tasks: tuple[str, ...] = TASKS
    iterations: int = 2
    inputs: tuple[int, ...] = ()      # inputs self-rationalized in each iteration (0 or missing = the whole part)
    samples: int = 10                 # judgments per input (pairwise: half in each answer order)
    seed_samples: int = 2             # hinted rationales per input for J_SFT
    seed_mode: str = "merge"          # "merge": two SFT judges merged with `alpha`; "multitask": one SFT on both
    alpha: float = 0.5                # weight of the pointwise judge in the merge
    selection: str = "correct"        # selection.SRE_SELECTIONS
    margin: int = 0                   # "correct": least score distance between chosen and rejected (pointwise)
    pairs_per_input: int = 2          # DPO pairs per prompt at most
    meta_judge: str = ""              # "meta" selection: a model name or path ("" = the current judge itself)
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 256
    sft_learning_rate: float = 2e-5   # J_SFT and best-of-N SFT (the paper's rationalizer SFT rate); DPO: train
    consistency_samples: int = 5
    baselines: tuple[str, ...] = BASELINES
    chunk: int = 8

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"config.sre.{field}={getattr(self, field)!r}: {why}")

        if not self.tasks or any(t not in TASKS for t in self.tasks):
            bad("tasks", f"expected some of {TASKS}")
        if self.iterations < 1:
            bad("iterations", "expected >= 1")
        if len(self.inputs) > self.iterations or any(n < 0 for n in self.inputs):
            bad("inputs", f"expected at most {self.iterations} counts >= 0 (one per iteration)")
        if self.samples < 2 or ("pairwise" in self.tasks and self.samples % 2):
            bad("samples", "expected an even number >= 2 (pairwise judgments: half in each answer order)")
        if self.seed_samples < 1 or ("pairwise" in self.tasks and self.seed_samples % 2 and self.seed_samples > 1):
            bad("seed_samples", "expected 1 or an even number (pairwise: half in each answer order)")
        if self.seed_mode not in ("merge", "multitask"):
            bad("seed_mode", "expected 'merge' or 'multitask'")
        if self.seed_mode == "merge" and set(self.tasks) != set(TASKS):
            bad("seed_mode", "'merge' needs both tasks (config.sre.tasks); use 'multitask' with one")
        if not 0.0 <= self.alpha <= 1.0:
            bad("alpha", "expected a weight in [0, 1]")
        if self.selection not in selection.SRE_SELECTIONS:
            bad("selection", f"expected one of {selection.SRE_SELECTIONS}")
        if self.margin < 0 or self.pairs_per_input < 1:
            bad("margin" if self.margin < 0 else "pairs_per_input", "expected margin >= 0, pairs_per_input >= 1")
        if any(b not in BASELINES for b in self.baselines):
            bad("baselines", f"expected some of {BASELINES}")
        if self.consistency_samples < 1:
            bad("consistency_samples", "expected >= 1")

    @classmethod
    def from_config(cls, cfg) -> "SreConfig":
        return config_util.from_config(cls, cfg, "config.sre")


# ------------------------------------------------------------------------------------------------ judges


def pairwise_judge(model, engine, base: api.JudgeConfig, **overrides) -> api.Judge:
    return api.Judge(model, dataclasses.replace(base, method="cot", prompt="pairwise", **overrides), engine=engine)


def pointwise_judge(model, engine, base: pointwise.PointwiseConfig, **overrides) -> pointwise.PointwiseJudge:
    return pointwise.PointwiseJudge(model, dataclasses.replace(base, **overrides), engine=engine)


class Judges:
    """The judges of one run: evaluation (greedy) and sampling ones over one engine whose weights change."""

    def __init__(self, model, engine, sre: SreConfig, pair_cfg: api.JudgeConfig, point_cfg: pointwise.PointwiseConfig,
                 seed: int):
        self.model, self.engine, self.sre, self.seed = model, engine, sre, seed
        self.pair_cfg, self.point_cfg = pair_cfg, point_cfg
        self.pairwise = pairwise_judge(model, engine, pair_cfg)
        self.pointwise = pointwise.Ranker(pointwise_judge(model, engine, point_cfg))
        self.meta = None  # (model, engine) of a separate meta-judge, loaded when first needed

    def sampling(self, task: str, n: int, seed: int):
        s = self.sre
        if task == "pairwise":
            return pairwise_judge(self.model, self.engine, self.pair_cfg, position="both", k=max(n // 2, 1),
                                  temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                                  seed=seed)
        return pointwise_judge(self.model, self.engine, self.point_cfg, n=n, temperature=s.temperature, top_p=s.top_p,
                               max_new_tokens=s.max_new_tokens, seed=seed)


def sample_task(judges: Judges, task: str, records: list[dict], path: str, n: int, seed: int, *, hinted=False,
                progress=True) -> list[dict]:
    judge = judges.sampling(task, n, seed)
    if task == "pairwise":
        return sampling.sample(judge, records, path, hinted=hinted, chunk=judges.sre.chunk, progress=progress)
    return sampling.sample_pointwise(judge, records, path, hinted=hinted, chunk=judges.sre.chunk, progress=progress)


def summary(task: str, lines: list[dict]) -> dict:
    return sampling.pointwise_summary(lines) if task == "pointwise" else sampling.summary(lines)


# -------------------------------------------------------------------------------------------- evaluation


def evaluate(run: runs.Run, stage: str, judges: Judges, eval_sets: dict, gold_set: list[dict], *, seed: int,
             ks=(1,), consistency: int = 0, progress: bool = True, bias_cfg=None) -> list[dict]:
    """Report rows of one judge: pairwise and pointwise-ranking accuracy on every set (stages <stage>_pairwise
    and <stage>_pointwise) and, with a gold-scored set, pointwise metrics. `consistency` > 0: self-consistency,
    the majority over that many sampled judgments (pairwise: in one order, maj@n; pointwise: majority score)."""
    pair, point = judges.pairwise, judges.pointwise
    if consistency:
        pair = pairwise_judge(judges.model, judges.engine, judges.pair_cfg, position="fixed", k=consistency,
                              temperature=judges.sre.temperature, top_p=judges.sre.top_p)
        ks = (1, consistency)
        point = pointwise.Ranker(pointwise_judge(judges.model, judges.engine, judges.point_cfg, n=consistency,
                                                 temperature=judges.sre.temperature, top_p=judges.sre.top_p))
    rows = []
    for name, judge in (("pairwise", pair), ("pointwise", point)):
        if name not in judges.sre.tasks:
            continue
        reps = report.evaluate(run, f"{stage}_{name}", judge, eval_sets, seed=seed, ks=ks, progress=progress,
                               untrained=stage == report.ZERO_SHOT_STAGE)
        row = {"stage": f"{stage}_{name}", "judge": name, **report.headline(reps)}
        if bias_cfg is not None:  # position, length and master-key bias (judge/bias.py) of this judge
            row.update(report.bias_headline(report.bias_stage(
                run, f"bias_{stage}_{name}", judge, eval_sets.get(splits.IN_DISTRIBUTION, []), bias_cfg)))
        if consistency and name == "pairwise":  # self-consistency's accuracy is the majority vote's
            for set_name, rep in reps.items():
                maj = (rep.get("maj_at_k") or {}).get(str(consistency))
                if maj is not None:
                    row[f"{set_name}/accuracy"] = maj["accuracy"]
                    row[f"{set_name}/ci95"] = [maj["lo"], maj["hi"]]
        if name == "pointwise" and gold_set:
            row.update(gold_metrics(run, f"{stage}_gold", point.judge, gold_set, progress))
        rows.append(row)
    return rows


def gold_metrics(run: runs.Run, stage: str, judge: pointwise.PointwiseJudge, records: list[dict], progress) -> dict:
    """Exact / MAE / Pearson / histogram against the gold scores of a pointwise set (stage `stage`)."""
    if not run.done(stage):
        items = [{"conversation": r["prompt"], "response": r["response"], "rubric": r["rubric"],
                  "reference": r.get("reference")} for r in records]
        scored = judge.score(items, progress=progress)
        pred = [pointwise.consensus([x["score"] for x in s["judgments"]]) for s in scored]
        run.finish(stage, evaluation.pointwise_report(pred, [r["score"] for r in records]))
    rep = run.result(stage)
    return {f"gold/{k}": rep[k] for k in ("exact", "mae", "pearson", "unscored")} | {"gold/histogram": rep["histogram"]}


# ------------------------------------------------------------------------------------------------ stages


def _fit(run, t_name, params, records, ft, model, progress, mesh=None):
    params, info = finetune.fit(params, records, ft, model.config, model.tokenizer, run.path("train", t_name),
                                progress=progress, mesh=mesh)
    run.finish(f"train_{t_name}", info)
    run.log({"event": "trained", "stage": t_name, "steps": info["steps"], "final_loss": info["final_loss"]})
    return params, info


def seed_records(task: str, lines: list[dict], records: list[dict]) -> list[dict]:
    """SFT records for J_SFT: the data's own feedback when every record has some (Feedback/Preference-Collection),
    else the hinted judgments that came out correct."""
    if _has_feedback(task, records):
        return _feedback_records(task, lines, records)
    return selection.correct_sft(selection.groups(lines))


def _has_feedback(task: str, records: list[dict]) -> bool:
    """Whether every record brings its own rationale (and, pointwise, a gold score to end it with)."""
    return bool(records) and all(r.get("feedback") and (task == "pairwise" or "score" in r) for r in records)


def _feedback_records(task, lines, records):
    by_id = {sampling.pair_key(r): r for r in records}
    out = []
    for g in selection.groups(lines):
        line_id = g["id"].rsplit("/", 1)[0]
        r = by_id[line_id]
        if task == "pointwise":
            target = prompts.with_verdict("Feedback: " + r["feedback"], r["score"], "result")
        else:
            order = int(g["id"].rsplit("/o", 1)[1])
            target = prompts.with_verdict("Feedback: " + r["feedback"], "A" if order == 0 else "B", "result_pair")
        out.append({"messages": g["messages"], "target": target, "source": f"{g['id']}/data"})
    return out


def seed_judge(run, judges: Judges, model, ft: finetune.FinetuneConfig, inputs: dict, progress, mesh=None) -> tuple:
    """J_SFT's params and a summary (hinted samples and records per task)."""
    sre, info = judges.sre, {}
    records = {}
    for task in sre.tasks:
        data = inputs[task][0]
        has_feedback = _has_feedback(task, data)
        lines = [] if has_feedback else sample_task(
            judges, task, data, run.path("samples", f"seed_{task}.jsonl"), sre.seed_samples, judges.seed + 17,
            hinted=True, progress=progress)
        if has_feedback:  # groups of un-judged lines: the data's feedback is the target
            lines = [_empty_line(task, judges, r) for r in data]
        records[task] = seed_records(task, lines, data)
        info[task] = {"records": len(records[task]), **({} if has_feedback else summary(task, lines))}
        if run.main:
            runs.write_jsonl(run.path("train", f"seed_{task}.jsonl"), records[task])
    sft = dataclasses.replace(ft, kind="sft", learning_rate=sre.sft_learning_rate)
    if sre.seed_mode == "multitask":
        both = [r for task in sre.tasks for r in records[task]]
        params, fit_info = _fit(run, "seed_multitask", model.params, both, sft, model, progress, mesh)
        info["steps"] = fit_info["steps"]
        return params, info
    fitted = {}
    for task in TASKS:
        if not records[task]:
            raise RuntimeError(f"J_SFT: no correct {task} rationale to train on ({info[task]}); more "
                               "config.sre.seed_samples or training inputs needed")
        fitted[task], fit_info = _fit(run, f"seed_{task}", model.params, records[task], sft, model, progress, mesh)
        info[f"{task}_steps"] = fit_info["steps"]
    return merge.linear(fitted["pointwise"], fitted["pairwise"], sre.alpha), info


def _empty_line(task, judges, r):
    """A judgment line with no judgments, for building prompts of records whose targets come from the data."""
    if task == "pointwise":
        answers = {k: {"response": v["response"], "conversation": r["prompt"], "reference": v["reference"]}
                   for k, v in sampling.pointwise_answers(r).items()}
        return {"id": sampling.pair_key(r), "task": "pointwise", "rubric": prompts.rubric_for(r), "skipped": None,
                "answers": answers,
                "judgments": [{"answer": k, "sample": 0, "text": "", "score": None, "correct": False} for k in answers]}
    return {"id": sampling.pair_key(r), "prompt": "pairwise", "rubric": prompts.rubric_for(r), "skipped": None,
            "conversation": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
            "judgments": [{"order": o, "sample": 0, "text": "", "verdict": None, "correct": False} for o in (0, 1)]}


def iteration_pairs(run, judges: Judges, t: int, inputs: dict, progress) -> tuple[list[dict], dict, dict]:
    """(DPO records, summary, {task: judgment lines}) of iteration t: sampling, meta ratings, pure selection."""
    sre, records, info, lines_by_task = judges.sre, [], {}, {}
    for task in sre.tasks:
        lines = sample_task(judges, task, inputs[task][t], run.path("samples", f"iter_{t}_{task}.jsonl"),
                            sre.samples, judges.seed + 1000 * t, progress=progress)
        lines_by_task[task] = lines
        if sre.selection == "meta":
            lines = with_ratings(lines, rated(run, judges, t, task, lines, progress))
        groups = selection.groups(lines)
        made, counts = selection.sre_pairs(groups, sre.selection, margin=sre.margin, max_pairs=sre.pairs_per_input)
        records += made
        # what the other label-free / label-based pairings would have made from the same judgments
        others = {m: selection.sre_pairs(groups, m, margin=sre.margin, max_pairs=sre.pairs_per_input)[1]
                  for m in ("correct", "majority") if m != sre.selection}
        info[task] = {**summary(task, lines), **counts, "other_selections": others}
    return records, info, lines_by_task


def with_ratings(lines: list[dict], ratings: list[dict]) -> list[dict]:
    """Lines whose judgments carry the meta-judge's rating (`meta`; an unrated one ranks last)."""
    out = []
    for line, r in zip(lines, ratings):
        js = [{**x, "meta": -np.inf if v is None else v} for x, v in zip(line["judgments"], r["ratings"])]
        out.append({**line, "judgments": js})
    return out


def rated(run, judges: Judges, t: int, task: str, lines, progress):
    """Meta-judge ratings (greedy `meta_judge` prompt) of iteration t's judgments, by the current judge or the
    model `config.sre.meta_judge` names (loaded once per run)."""
    sre = judges.sre
    model, engine = judges.model, judges.engine
    if sre.meta_judge:
        if judges.meta is None:
            other = load_model(sre.meta_judge)
            judges.meta = (other, Engine(other, max_batch=engine.max_batch))
        model, engine = judges.meta
    meta = pointwise_judge(model, engine, judges.point_cfg, n=1, temperature=0.0, max_new_tokens=sre.max_new_tokens)
    return sampling.rate(meta, lines, run.path("samples", f"iter_{t}_{task}_meta.jsonl"), chunk=sre.chunk,
                         progress=progress)


# -------------------------------------------------------------------------------------------------- loop


def split_inputs(sre: SreConfig, pairs: list[dict], gold_train: list[dict], seed: int) -> dict[str, list[list[dict]]]:
    """{task: [part 0 (J_SFT), part 1, ..., part T]}: disjoint seeded parts; part t capped at inputs[t-1]."""
    out = {}
    for task in sre.tasks:
        pool = gold_train if task == "pointwise" and gold_train else pairs
        parts = splits.parts(pool, 1 + sre.iterations, seed)
        for t, cap in enumerate(sre.inputs, 1):
            if cap:
                parts[t] = parts[t][:cap]
        out[task] = parts
    return out


def run_sre(run, model, engine, sre: SreConfig, ft, pair_cfg, point_cfg, train, eval_sets, gold, *, seed=0,
            ks=(1,), progress=True, mesh=None, eval_cfg=None):
    """Runs (or resumes) J_SFT, the baselines and every iteration; returns (final params, report rows, {stage:
    summary}: J_SFT's hinted samples and records, each iteration's samples and selection counts)."""
    judges = Judges(model, engine, sre, pair_cfg, point_cfg, seed)
    inputs = split_inputs(sre, train, gold["train"], seed)
    ev = lambda stage, **kw: evaluate(run, stage, judges, eval_sets, gold["eval"], seed=seed, ks=ks,  # noqa: E731
                                      progress=progress, **kw)
    # the untrained model as both judges: what every later judge is compared against (report.significance)
    rows = [dict(r, method=ZERO_SHOT) for r in ev(report.ZERO_SHOT_STAGE)]
    params, info = seed_judge(run, judges, model, ft, inputs, progress, mesh)
    run.log({"event": "seed", **runs.flatten(info)})
    summaries = {"seed": info}
    sft_params = params
    engine.set_params(params)
    if report.evaluates_iteration(eval_cfg, 0, sre.iterations):
        # bias before the DPO iterations (J_SFT) and after the last one; config.eval.bias=false skips it
        rows += [dict(r, method="J_SFT", **_seed_cols(info)) for r in ev("eval_sft", bias_cfg=eval_cfg)]
    else:  # config.eval.every_iteration=false: J_SFT's counts without an evaluation
        rows.append(dict(stage="train_sft", method="J_SFT", **_seed_cols(info)))
    if "self_consistency" in sre.baselines:
        rows += [dict(r, method=f"self-consistency@{sre.consistency_samples}")
                 for r in ev("eval_self_consistency", consistency=sre.consistency_samples)]
    first_lines = None
    for t in range(1, sre.iterations + 1):
        engine.set_params(params)
        records, summary_t, lines = iteration_pairs(run, judges, t, inputs, progress)
        first_lines = first_lines or lines
        run.log({"event": "sampled", "iteration": t, "records": len(records), **runs.flatten(summary_t)})
        summaries[f"iteration_{t}"] = summary_t
        if not records:
            print(f"iteration {t}: no preference pair ({summary_t}); the loop stops here", flush=True)
            # every_iteration=false may have left the judge trained last (the engine's weights) unevaluated
            stage = "sft" if t == 1 else f"iter_{t - 1}"
            at = next((i for i, r in enumerate(rows) if r["stage"] == f"train_{stage}"), None)
            if at is not None:
                counts = rows.pop(at)
                rows[at:at] = [{**counts, **r} for r in ev(f"eval_{stage}", bias_cfg=eval_cfg)]
            break
        if run.main:
            runs.write_jsonl(run.path("train", f"iter_{t}.jsonl"), records)
        dpo = dataclasses.replace(ft, kind="dpo", seed=ft.seed + t)
        params, fit_info = _fit(run, f"iter_{t}", params, records, dpo, model, progress, mesh)
        engine.set_params(params)
        cols = {"training_records": len(records), "train_steps": fit_info["steps"],
                "train_final_loss": fit_info["final_loss"],
                **{f"{task}_{k}": v for task, s in summary_t.items() for k, v in s.items()
                   if k in ("correct_rate", "pairs", "groups_without_pairs")}}
        last = t == sre.iterations
        if report.evaluates_iteration(eval_cfg, t, sre.iterations):
            rows += [dict(r, method=f"SRE iteration {t}", **cols)
                     for r in ev(f"eval_iter_{t}", bias_cfg=eval_cfg if last else None)]
        else:  # config.eval.every_iteration=false: the iteration's counts without an evaluation
            rows.append(dict(stage=f"train_iter_{t}", method=f"SRE iteration {t}", **cols))
    if "best_of_n" in sre.baselines and first_lines:
        bon = [r for task in sre.tasks for r in selection.best_of_n(selection.groups(first_lines[task]))]
        if bon:
            if run.main:
                runs.write_jsonl(run.path("train", "best_of_n.jsonl"), bon)
            sft = dataclasses.replace(ft, kind="sft", learning_rate=sre.sft_learning_rate)
            bon_params, fit_info = _fit(run, "best_of_n", sft_params, bon, sft, model, progress, mesh)
            engine.set_params(bon_params)
            rows += [dict(r, method=f"best-of-{sre.samples} SFT", training_records=len(bon),
                          train_steps=fit_info["steps"], train_final_loss=fit_info["final_loss"])
                     for r in ev("eval_best_of_n")]
            engine.set_params(params)
    return params, rows, summaries


def _seed_cols(info: dict) -> dict:
    return {"training_records": sum(v["records"] for v in info.values() if isinstance(v, dict)),
            "train_steps": sum(v for k, v in info.items() if k.endswith("steps"))}


COLUMNS = ("method", "judge", f"{IN_DISTRIBUTION}/accuracy", f"{IN_DISTRIBUTION}/ci95",
           f"{OUT_OF_DISTRIBUTION}/accuracy", f"{OUT_OF_DISTRIBUTION}/Chat",
           f"{OUT_OF_DISTRIBUTION}/Chat Hard", f"{OUT_OF_DISTRIBUTION}/Safety",
           f"{OUT_OF_DISTRIBUTION}/Reasoning", f"{IN_DISTRIBUTION}/invalid_rate",
           "gold/exact", "gold/mae", "gold/pearson", "training_records", "train_steps")


methods.register_records("sre_pairs")(selection.sre_pairs)


class _Part:
    """Self-Rationalization as the experiment skeleton's part (genrm_jax/experiment.py)."""

    @staticmethod
    def prepare(setup):
        c = setup.c
        sre = SreConfig.from_config(c.sre)
        point_cfg = pointwise.PointwiseConfig.from_config(c.pointwise)
        longest = max(x or 0 for x in (setup.judge.max_prompt_tokens, point_cfg.max_prompt_tokens))
        setup.sampled = (longest, sre.max_new_tokens,
                         "config.judge / config.pointwise .max_prompt_tokens, config.sre.max_new_tokens")
        gold = {"train": [], "eval": []}
        if c.data.pointwise_path:
            gold_records = splits.load("feedback-collection", c.data.pointwise_path, setup.skipped)
            g_train, g_eval = splits.train_held_out(gold_records, float(c.data.held_out_fraction), seed=c.seed)
            gold = {"train": g_train, "eval": splits.take(g_eval, c.data.pointwise_eval, c.seed)}
        if len(setup.train) < 1 + sre.iterations:
            raise benchmark.ConfigError(f"config.data.train_pairs: {len(setup.train)} training pairs cannot make "
                                        f"{1 + sre.iterations} parts (J_SFT + config.sre.iterations)")
        return sre, point_cfg, gold

    @staticmethod
    def engine(method) -> bool:
        return True

    @staticmethod
    def run(run, setup, model, engine, progress):
        sre, point_cfg, gold = setup.part
        if gold["train"]:
            print(f"self-rationalization: {len(gold['train'])} gold-scored inputs", flush=True)
        params, rows, summaries = run_sre(run, model, engine, sre, setup.ft, setup.judge, point_cfg, setup.train,
                                          setup.eval_sets, gold, seed=setup.seed, ks=setup.ks, progress=progress,
                                          mesh=setup.mesh, eval_cfg=setup.c.eval)
        _plot_errors(run, rows)
        return report.Outcome(params, rows, {"selection": sre.selection, "seed_mode": sre.seed_mode,
                                             "gold_eval_items": len(gold["eval"]), "stages": summaries},
                              title=f"Self-Rationalization ({setup.c.preset}, selection: {sre.selection})",
                              columns=[k for k in COLUMNS if any(k in r for r in rows)],
                              baseline=lambda row: f"{report.ZERO_SHOT_STAGE}_{row.get('judge')}")


PART = _Part()


def _plot_errors(run, rows) -> None:
    """score_errors.png: the histogram of (predicted - gold) per judge (Trivedi et al., Figure 5)."""
    hists = [(r["method"], r["gold/histogram"]) for r in rows if r.get("gold/histogram")]
    if not hists or not run.main:
        return
    import matplotlib  # optional and slow to import: only when there is something to plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = np.arange(-4, 5)
    width = 0.8 / len(hists)
    for i, (name, h) in enumerate(hists):
        total = max(sum(h.values()), 1)
        ax.bar(xs + i * width - 0.4 + width / 2, [h.get(str(x), 0) / total for x in xs], width, label=name)
    ax.set_xlabel("predicted score - gold score")
    ax.set_ylabel("share of items")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.path("score_errors.png"), dpi=120)
    plt.close(fig)
