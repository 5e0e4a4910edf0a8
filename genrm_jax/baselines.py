"""The baselines STaR is compared with, each one fine-tuning run of the base model on the training pairs:

- `genrm` (Mahan et al., Eq. 7): SFT on the verdict token alone. Every pair is shown in both orders with the
  GenRM prompt; the target is "A" when the chosen answer is shown first, "B" otherwise. Judged by P(A) vs P(B).
- `cot_genrm` (Eq. 8): SFT on a rationale and its verdict with the judge prompt. The rationales come from a
  file (`data.rationales_path`, see `read_rationales`) or, when it is empty (the bundled data has none), from
  the model itself with the true label as a hint: that default is exactly one Rationalizer round over all the
  training pairs, sampled with the settings of `config.star`. Judged by sampled judgments (`config.judge`).
- `bt_rm`: a Bradley-Terry reward model, a fresh scalar head on the last hidden state trained with the model.
- `pairrm`: the PairRM head, reading both answers in one sequence (both orders).

Stages of the run directory (runs.Run): eval_0 (the base judge; none for bt_rm / pairrm, whose untrained head
says nothing), train (finetune.fit in <workdir>/train/, resumed from its checkpoint), eval_1 and export. The
training records go to <workdir>/train.jsonl; cot_genrm's sampled rationales to <workdir>/samples/.
"""
from __future__ import annotations

import dataclasses
import functools

import jax

from genrm_jax import finetune, methods, report, runs
from genrm_jax.data import sources, splits
from genrm_jax.judge import api, benchmark, prompts, verdicts
from genrm_jax.models import heads
from genrm_jax.star import loop
from genrm_jax.star import judgments as sampling
from genrm_jax.star import selection


# ------------------------------------------------------------------------------------------- records


@methods.register_records("genrm")
def genrm_records(pairs: list[dict], cut=None, fit=None) -> list[dict]:
    """Two SFT records per pair, one per order: target "A" when the chosen answer is shown first, else "B".
    `cut(answer)` shortens answers, `fit(conversation, a, b)` the conversation (None: the order is left out).

    Both orders of a pair share a `group`, so the pipeline puts them in one batch: each batch then holds as many
    "A" targets as "B" ones, as PairRM's examples do. Shuffled apart, the batch's share of "A" varies from
    step to step and the verdict of the whole batch flips with it (docs/learning.md)."""
    cut = cut or (lambda text: text)
    fit = fit or (lambda conv, a, b: conv)
    out = []
    for r in pairs:
        chosen, rejected = cut(r["chosen"]), cut(r["rejected"])
        for a, b, target, order in ((chosen, rejected, "A", "chosen_first"), (rejected, chosen, "B", "chosen_second")):
            conv = fit(r["prompt"], a, b)
            if conv is not None:
                out.append({"messages": prompts.genrm(conv, a, b), "target": target,
                            "source": f"{splits._key(r)}/{order}", "group": splits._key(r)})
    return out


@methods.register_records("pairs")
def pair_records(pairs: list[dict], cut=None, fit=None) -> list[dict]:
    """bt / pairrm records: the training pairs themselves (the pipeline fits them to train.max_len; `fit`, the
    judge prompt's fitting, does not apply)."""
    cut = cut or (lambda text: text)
    return [{"prompt": r["prompt"], "chosen": cut(r["chosen"]), "rejected": cut(r["rejected"]),
             "source": splits._key(r)} for r in pairs]


def read_rationales(path: str) -> list[dict]:
    """CoT-GenRM SFT records from a JSONL file of rows {"prompt" (str or turns), "chosen", "rejected",
    "rationale": the judgment with the chosen answer shown as A, ending with its verdict [[A]],
    "rationale_swapped" (optional): the judgment with the chosen answer shown as B, ending with [[B]]}.
    One record per rationale, in the order it was written for. Answers are kept whole: the rationale may
    discuss any part of them. A malformed row raises sources.DataError naming file, line and field."""
    out = []
    for where, row in sources.iter_rows(path):
        if not isinstance(row, dict):
            raise sources.DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        pair = sources._generic(row, where, path)  # prompt, chosen, rejected checked as any preference file
        problem = sources.answer_problem({"chosen": pair["chosen"], "rejected": pair["rejected"]})
        if problem:
            raise sources.DataError(f"{where}: {problem[1]}")
        for field, label, shown in (("rationale", "A", (pair["chosen"], pair["rejected"])),
                                    ("rationale_swapped", "B", (pair["rejected"], pair["chosen"]))):
            text = sources._field(row, field, where, optional=field != "rationale")
            if text is None:
                continue
            found = verdicts.parse(text, "brackets")
            if found != label:
                raise sources.DataError(f"{where}: field {field!r} must end with the verdict [[{label}]] (the chosen "
                                        f"answer shown as {label}); its verdict is "
                                        + (f"[[{found}]]" if found else "missing"))
            out.append({"messages": prompts.judge(pair["prompt"], *shown), "target": text,
                        "source": f"{where}/{field}"})
    if not out:
        raise sources.DataError(f"{path}: no rows")
    return out


def rationale_sampling(c) -> loop.StarConfig:
    """cot_genrm's default rationales: one Rationalizer round over all the training pairs (config.star holds
    the sampling settings; the loop's own fields are fixed here)."""
    return loop.StarConfig.from_config({**c.star.to_dict(), "iterations": 1, "parts": 1})


@methods.register_records("rationales")
def sampled_rationales(run, model, engine, star, judge_cfg, train, seed, progress) -> tuple[list[dict], dict]:
    """cot_genrm's records when no file gives them: hinted judgments that reach the true verdict (one Rationalizer
    round), with the sampling summary."""
    judge = loop.sampling_judge(model, engine, star, judge_cfg, seed=seed + 1000)
    lines = sampling.sample(judge, train, run.path("samples", "rationales.jsonl"), hinted=True, chunk=star.chunk,
                            progress=progress)
    return selection.rationalized(lines), sampling.summary(lines)


# ------------------------------------------------------------------------------- the experiment's part


class _Part:
    """One fine-tuning run of the base model, as the experiment skeleton's part (genrm_jax/experiment.py)."""

    @staticmethod
    def prepare(setup):
        """cot_genrm: its rationale file read now (or the sampling settings of the round that writes them)."""
        c, method = setup.c, setup.method
        if method.name != "cot_genrm":
            return None
        if c.data.rationales_path:
            if setup.judge.prompt != "judge":  # a file's rationales are written for the judge prompt
                raise benchmark.ConfigError(f"config.judge.prompt: cot_genrm trains a rationale file on the 'judge' "
                                            f"prompt, got {setup.judge.prompt!r}")
            return {"rationales": read_rationales(c.data.rationales_path)}
        if setup.judge.prompt not in prompts.HINTED:  # sampled rationales need the prompt's hinted form
            raise benchmark.ConfigError(f"config.judge.prompt: cot_genrm samples rationales with one of "
                                        f"{', '.join(prompts.HINTED)}, got {setup.judge.prompt!r}")
        return {"star": rationale_sampling(c)}

    @staticmethod
    def engine(method) -> bool:
        return not method.head  # a reward head judges by a forward pass: nothing is sampled

    @staticmethod
    def run(run, setup, model, engine, progress):
        c, method, judge_cfg, train, eval_sets = setup.c, setup.method, setup.judge, setup.train, setup.eval_sets
        rationales = (setup.part or {}).get("rationales")
        head = None
        if method.head:
            head = heads.init(jax.random.PRNGKey(c.seed), model.config)
            rows = [{"stage": "eval_0", "note": "not evaluated: an untrained reward head scores at random"}]
        else:
            base_judge = api.Judge(model, judge_cfg, engine=engine)
            before = report.evaluate(run, "eval_0", base_judge, eval_sets, seed=c.seed, ks=setup.ks,
                                     progress=progress, untrained=True)
            rows = [{"stage": "eval_0", **report.headline(before),
                     **report.bias_headline(report.bias_stage(run, "bias_0", base_judge,
                                                              eval_sets.get(splits.IN_DISTRIBUTION, []), c.eval))}]

        # Answers cut as the evaluation judge cuts them (api.Judge.compare): training prompts match its own.
        cut = functools.partial(prompts.truncate, model.tokenizer, max_tokens=judge_cfg.max_answer_tokens)
        build = methods.records(method)
        sampled = None
        if rationales is not None:
            records = rationales
        elif method.samples:  # the model writes its own training records (cot_genrm's hinted round)
            records, sampled = build(run, model, engine, setup.part["star"], judge_cfg, train, c.seed, progress)
        else:  # conversations cut as the evaluation judge's prompt cuts them (a reward head reads them whole)
            records = build(train, cut, None if method.head else base_judge.fitted_conversation)
        if run.main:
            runs.write_jsonl(run.path("train.jsonl"), records)

        extra = {"training_records": len(records)}
        if method.name == "cot_genrm":
            extra["rationales"] = c.data.rationales_path or "sampled with the label as a hint (one Rationalizer round)"
            extra["rationale_sampling"] = sampled
            if rationales is not None:  # the file's rows are the training pairs; config.data's were not used
                extra["training_pairs"] = len({r["source"].rsplit("/", 1)[0] for r in rationales})
        if not records:  # nothing to train on: said plainly rather than training on an empty set
            why = "no hinted rationale reached the correct verdict" if sampled else "no pair fits the judge's prompt"
            extra["stopped"] = f"no training records ({why}): nothing trained"
            print(extra["stopped"], flush=True)
            return report.Outcome(None, rows, extra)

        trained, info = finetune.fit(model.params, records, setup.ft, model.config, model.tokenizer,
                                     run.path("train"), head=head, progress=progress, mesh=setup.mesh)
        if not run.done("train"):
            run.log({"event": "trained", "steps": info["steps"], "final_loss": info["final_loss"]})
        info = run.result("train") if run.done("train") else run.finish("train", info)  # a rerun reports the first
        params, head = (trained["model"], trained["head"]) if head is not None else (trained, None)
        if engine is not None:
            engine.set_params(params)
        judge = api.Judge(dataclasses.replace(model, params=params), judge_cfg, engine=engine, head=head)
        after = report.evaluate(run, "eval_1", judge, eval_sets, seed=c.seed, ks=setup.ks, progress=progress)
        rows.append({"stage": "eval_1", **report.headline(after),
                     **report.bias_headline(report.bias_stage(run, "bias_1", judge,
                                                              eval_sets.get(splits.IN_DISTRIBUTION, []), c.eval)),
                     "training_records": len(records),
                     "train_examples": info["examples"], "train_steps": info["steps"],
                     "train_final_loss": info["final_loss"]})
        extra["training_examples"] = info["data"]["examples"]
        extra["training_skipped"] = info["data"]["skipped"]
        return report.Outcome(params, rows, extra, head=head)


PART = _Part()
