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

from genrm_jax import finetune, recipe, runs
from genrm_jax.data import sources, splits
from genrm_jax.judge import api, prompts, verdicts

LOSS = {"genrm": "sft", "cot_genrm": "sft", "bt_rm": "bt", "pairrm": "pairrm"}   # method -> finetune kind
JUDGE = {"genrm": dict(method="genrm", position="both"), "cot_genrm": {},           # eval judge overrides
         "bt_rm": dict(method="bt"), "pairrm": dict(method="pairrm")}
HEAD_METHODS = ("bt_rm", "pairrm")


# ------------------------------------------------------------------------------------------- records


def genrm_records(pairs: list[dict], cut=None, fit=None) -> list[dict]:
    """Two SFT records per pair, one per order: target "A" when the chosen answer is shown first, else "B".
    `cut(answer)` shortens answers, `fit(conversation, a, b)` the conversation (None: the order is left out)."""
    cut = cut or (lambda text: text)
    fit = fit or (lambda conv, a, b: conv)
    out = []
    for r in pairs:
        chosen, rejected = cut(r["chosen"]), cut(r["rejected"])
        for a, b, target, order in ((chosen, rejected, "A", "chosen_first"), (rejected, chosen, "B", "chosen_second")):
            conv = fit(r["prompt"], a, b)
            if conv is not None:
                out.append({"messages": prompts.genrm(conv, a, b), "target": target,
                            "source": f"{splits._key(r)}/{order}"})
    return out


def pair_records(pairs: list[dict], cut=None) -> list[dict]:
    """bt / pairrm records: the training pairs themselves."""
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


def rationale_sampling(c):
    """cot_genrm's default rationales: one Rationalizer round over all the training pairs (config.star holds
    the sampling settings; the loop's own fields are fixed here)."""
    from genrm_jax.star import loop

    return loop.StarConfig.from_config({**c.star.to_dict(), "method": "rationalizer", "iterations": 1,
                                        "parts": 1, "rationalizer_loss": "sft"})


def sampled_rationales(run, model, engine, star, judge_cfg, train, seed, progress) -> tuple[list[dict], dict]:
    from genrm_jax.star import loop
    from genrm_jax.star import sample as sampling
    from genrm_jax.star import select

    judge = loop.sampling_judge(model, engine, star, judge_cfg, seed=seed + 1000)
    lines = sampling.sample(judge, train, run.path("samples", "rationales.jsonl"), hinted=True, chunk=star.chunk,
                            progress=progress)
    return select.rationalized(lines), sampling.summary(lines)


# ------------------------------------------------------------------------------------------ experiment


def experiment(c, workdir: str, method: str, *, progress: bool = True) -> dict:
    """One baseline from its config (experiments/configs/<method>.py): checks the config and data before the
    model loads, evaluates the base judge, fine-tunes once, evaluates again, exports, writes the report."""
    from genrm_jax.judge import benchmark

    def prepare():
        if method not in LOSS:
            raise ValueError(f"unknown baseline {method!r}; expected one of {', '.join(LOSS)}")
        ft = finetune.FinetuneConfig.from_config(c.train, kind=LOSS[method])
        overrides = dict(JUDGE[method], max_len=c.train.max_len) if method in HEAD_METHODS else JUDGE[method]
        judge_cfg = benchmark.judge_config(c.judge, **overrides)
        benchmark.check_engine(c)
        ks = benchmark.check_ks(c.eval.ks)
        skipped: list = []
        train, eval_sets = recipe.data(c.data, c.seed, skipped)
        rationales = star = None
        if method == "cot_genrm":
            if judge_cfg.prompt != "judge":  # rationales (read or sampled) are written for the judge prompt
                raise benchmark.ConfigError(f"config.judge.prompt: cot_genrm trains on the 'judge' prompt, got "
                                            f"{judge_cfg.prompt!r}")
            star = rationale_sampling(c)
            if c.data.rationales_path:
                rationales = read_rationales(c.data.rationales_path)
        recipe.check_memory(c, ft, held_copies=1)
        return ft, judge_cfg, ks, train, eval_sets, skipped, rationales, star, recipe.mesh(c)

    run, prepared, done = recipe.open_run(c, workdir, prepare)
    if done is not None:
        return done
    ft, judge_cfg, ks, train, eval_sets, data_skipped, rationales, star, mesh = prepared

    trained_on = f"{len(rationales)} rationales" if rationales is not None else f"{len(train)} training pairs"
    print(f"{method}: {trained_on}, " + ", ".join(f"{k} {len(v)} pairs" for k, v in eval_sets.items())
          + f"; run directory {run.dir}", flush=True)

    import jax

    from genrm_jax.models import heads

    model = recipe.load(c, mesh)
    engine = head = None
    if method in HEAD_METHODS:
        head = heads.init(jax.random.PRNGKey(c.seed), model.config)
        rows = [{"stage": "eval_0", "note": "not evaluated: an untrained reward head scores at random"}]
    else:
        engine = recipe.engine(c, model, mesh)
        base_judge = api.Judge(model, judge_cfg, engine=engine)
        before = recipe.evaluate(run, "eval_0", base_judge, eval_sets, seed=c.seed, ks=ks, progress=progress)
        rows = [{"stage": "eval_0", **recipe.headline(before)}]

    # Answers cut as the evaluation judge cuts them (api.Judge.compare): training prompts match its own.
    cut = functools.partial(prompts.truncate, model.tokenizer, max_tokens=judge_cfg.max_answer_tokens)
    sampled = None
    if method == "genrm":
        records = genrm_records(train, cut, functools.partial(base_judge.fitted_conversation, builder=prompts.genrm))
    elif method in HEAD_METHODS:
        records = pair_records(train, cut)
    elif rationales is not None:
        records = rationales
    else:
        records, sampled = sampled_rationales(run, model, engine, star, judge_cfg, train, c.seed, progress)
    if run.main:
        runs.write_jsonl(run.path("train.jsonl"), records)

    extra = {"mesh": dict(mesh.shape) if mesh is not None else None, "method": method, "preset": c.preset, "data_rows_skipped": recipe.skip_counts(data_skipped),
             "training_pairs": len(train), "training_records": len(records),
             "eval_pairs": {k: len(v) for k, v in eval_sets.items()}}
    if method == "cot_genrm":
        extra["rationales"] = c.data.rationales_path or "sampled with the label as a hint (one Rationalizer round)"
        extra["rationale_sampling"] = sampled
        if rationales is not None:  # the file's rows are the training pairs; config.data's were not used
            extra["training_pairs"] = len({r["source"].rsplit("/", 1)[0] for r in rationales})
    if not records:  # nothing to train on: said plainly rather than training on an empty set
        why = "no hinted rationale reached the correct verdict" if sampled else "no pair fits the judge's prompt"
        extra["stopped"] = f"no training records ({why}): nothing trained"
        print(extra["stopped"], flush=True)
        recipe.write_report(run, rows, title=f"{method} ({c.preset})", extra=extra)
        return {"rows": rows, **extra}

    trained, info = finetune.fit(model.params, records, ft, model.config, model.tokenizer, run.path("train"),
                                 head=head, progress=progress, mesh=mesh)
    if not run.done("train"):
        run.log({"event": "trained", "steps": info["steps"], "final_loss": info["final_loss"]})
    info = run.result("train") if run.done("train") else run.finish("train", info)  # a rerun reports the first fit
    params, head = (trained["model"], trained["head"]) if head is not None else (trained, None)
    if engine is not None:
        engine.set_params(params)
    judge = api.Judge(dataclasses.replace(model, params=params), judge_cfg, engine=engine, head=head)
    after = recipe.evaluate(run, "eval_1", judge, eval_sets, seed=c.seed, ks=ks, progress=progress)
    rows.append({"stage": "eval_1", **recipe.headline(after), "training_records": len(records),
                 "train_examples": info["examples"], "train_steps": info["steps"],
                 "train_final_loss": info["final_loss"]})
    extra["training_examples"] = info["data"]["examples"]
    extra["training_skipped"] = info["data"]["skipped"]
    extra["export"] = recipe.export(run, params, model, head=head)
    recipe.write_report(run, rows, title=f"{method} ({c.preset})", extra=extra)
    return run.finish("report", {"rows": rows, **extra})
