"""The STaR loop, shared by STaR-SFT, STaR-DPO and the Rationalizer (and Self-Rationalization next):

    the training pairs are split into `star.parts` disjoint parts (seeded); iteration t
      1. samples `star.samples` judgments per pair of part t from the current judge, half in each answer order
         (temperature 1.0, top-p 0.95 by default): <workdir>/samples/iter_<t>.jsonl;
      2. selects training records from them (star/select.py, pure): <workdir>/train/iter_<t>.jsonl;
      3. fine-tunes from the current weights (finetune.fit; DPO's reference = the model at the start of the
         iteration): <workdir>/train/iter_<t>/ (checkpoints, metrics);
      4. evaluates the new judge on the held-out sets (stage eval_<t>),
    and moves on with the new weights, which the sampling engine takes without recompiling (Engine.set_params).

Every step is a stage of the run directory: a rerun after a kill skips finished stages, resumes sampling at
the first pair not yet written and training at its last checkpoint. An iteration whose samples give nothing to
train on (no correct judgment; for DPO no pair with both a correct and an incorrect one) is reported and ends
the loop cleanly instead of training on an empty set.
"""
from __future__ import annotations

import dataclasses

from genrm_jax import config_util, finetune, recipe, runs
from genrm_jax.judge import api
from genrm_jax.star import sample as sampling
from genrm_jax.star import select

METHODS = {"star_sft": "sft", "star_dpo": "dpo", "rationalizer": None}  # method -> loss (rationalizer: config)


@dataclasses.dataclass(frozen=True)
class StarConfig:
    method: str = "star_dpo"
    iterations: int = 3
    parts: int = 3
    samples: int = 8               # judgments per pair, half in each answer order
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 256
    verdict: str = "force"         # "force": a verdict every time (api.JudgeConfig.verdict); "parse": the paper's
    rationalizer_loss: str = "sft"  # rationalizer: "sft" on hinted rationales, or "ipo" (hinted vs. own wrong)
    chunk: int = 8                 # pairs per sampling call (and per line flush)

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"config.star.{field}={getattr(self, field)!r}: {why}")

        if self.method not in METHODS:
            bad("method", f"expected one of {', '.join(METHODS)}")
        if self.samples < 2 or self.samples % 2:
            bad("samples", "expected an even number >= 2 (half in each answer order)")
        if self.iterations < 1 or self.parts < self.iterations:
            bad("iterations", f"expected 1 <= iterations <= parts ({self.parts}): each iteration uses a new part")
        pairs_needed = self.method == "star_dpo" or (self.method == "rationalizer" and self.rationalizer_loss == "ipo")
        if pairs_needed and self.samples < 4:
            bad("samples", "expected >= 4: preference pairs need two judgments of the same prompt in each order")
        if self.rationalizer_loss not in ("sft", "ipo"):
            bad("rationalizer_loss", "expected 'sft' or 'ipo'")

    @classmethod
    def from_config(cls, cfg) -> "StarConfig":
        return config_util.from_config(cls, cfg, "config.star")

    def loss(self) -> str:
        return METHODS[self.method] or self.rationalizer_loss


def sampling_judge(model, engine, star: StarConfig, judge_cfg: api.JudgeConfig, seed: int) -> api.Judge:
    """The judge that samples training judgments: the evaluation judge's prompt and limits, STaR's sampling."""
    cfg = dataclasses.replace(judge_cfg, method="cot", position="both", k=star.samples // 2,
                              temperature=star.temperature, top_p=star.top_p, max_new_tokens=star.max_new_tokens,
                              verdict=star.verdict, seed=seed)
    return api.Judge(model, cfg, engine=engine)


def iteration_records(star: StarConfig, judge, part: list[dict], run: runs.Run, t: int, progress: bool):
    """(training records, sampling summary) of iteration t: sampling and pure selection."""
    plain = hinted = None
    if star.method != "rationalizer" or star.rationalizer_loss == "ipo":
        plain = sampling.sample(judge, part, run.path("samples", f"iter_{t}.jsonl"), chunk=star.chunk,
                                progress=progress)
    if star.method == "rationalizer":
        hinted = sampling.sample(judge, part, run.path("samples", f"iter_{t}_hinted.jsonl"), hinted=True,
                                 chunk=star.chunk, progress=progress)
    if star.method == "star_sft":
        records = select.star_sft(plain)
    elif star.method == "star_dpo":
        records = select.star_dpo(plain)
    elif star.rationalizer_loss == "sft":
        records = select.rationalized(hinted)
    else:
        records = select.rationalized_pairs(hinted, plain)
    summary = {"sampled": sampling.summary(plain)} if plain is not None else {}
    if hinted is not None:
        summary["hinted"] = sampling.summary(hinted)
    summary["training_records"] = len(records)
    return records, summary


def run_loop(run: runs.Run, model, engine, star: StarConfig, ft: finetune.FinetuneConfig, eval_judge_cfg,
             train: list[dict], eval_sets: dict, *, seed: int = 0, ks=(1,), progress: bool = True, mesh=None):
    """Runs (or resumes) every iteration; returns (final params, report rows: one per evaluation, iteration
    summaries included, and a note when the loop stopped early)."""
    parts = recipe.parts(train, star.parts, seed)
    judge = api.Judge(model, eval_judge_cfg, engine=engine)
    rows = [{"stage": "eval_0", "iteration": 0,
             **recipe.headline(recipe.evaluate(run, "eval_0", judge, eval_sets, seed=seed, ks=ks,
                                               progress=progress))}]
    params, stopped = model.params, None
    for t in range(1, star.iterations + 1):
        engine.set_params(params)
        sampler = sampling_judge(model, engine, star, eval_judge_cfg, seed=seed + 1000 * t)
        records, summary = iteration_records(star, sampler, parts[t - 1], run, t, progress)
        run.log({"event": "sampled", "iteration": t, **runs.flatten(summary)})
        if not records:
            stopped = (f"iteration {t}: nothing to train on ({summary}); "
                       + ("no pair had both a correct and an incorrect judgment in the same answer order"
                          if ft.kind in ("dpo", "ipo")
                          else "no judgment was correct") + ": the loop stops here")
            print(stopped, flush=True)
            break
        if run.main:
            runs.write_jsonl(run.path("train", f"iter_{t}.jsonl"), records)
        ft_t = dataclasses.replace(ft, kind=star.loss(), seed=ft.seed + t)
        params, info = finetune.fit(params, records, ft_t, model.config, model.tokenizer,
                                    run.path("train", f"iter_{t}"), progress=progress, mesh=mesh)
        run.finish(f"train_{t}", info)
        run.log({"event": "trained", "iteration": t, "steps": info["steps"], "final_loss": info["final_loss"]})
        engine.set_params(params)
        rep = recipe.evaluate(run, f"eval_{t}", judge, eval_sets, seed=seed, ks=ks, progress=progress)
        rows.append({"stage": f"eval_{t}", "iteration": t, **recipe.headline(rep),
                     "pairs": summary.get("sampled", summary.get("hinted", {})).get("pairs"),
                     "pairs_with_correct": summary.get("sampled", summary.get("hinted", {})).get("pairs_with_correct"),
                     "sample_invalid_rate": summary.get("sampled", summary.get("hinted", {})).get("invalid_rate"),
                     "training_records": summary["training_records"], "train_steps": info["steps"],
                     "train_final_loss": info["final_loss"]})
    return params, rows, stopped


def experiment(c, workdir: str, *, progress: bool = True) -> dict:
    """A whole STaR experiment from its config (experiments/configs/star_*.py): checks the config and data
    before the model loads, runs or resumes the loop, exports the judge, writes and prints the report."""
    from genrm_jax.judge import benchmark

    def prepare():
        star = StarConfig.from_config(c.star)
        ft = finetune.FinetuneConfig.from_config(c.train, kind=star.loss())
        judge_cfg = benchmark.judge_config(c.judge)
        benchmark.check_engine(c)
        ks = benchmark.check_ks(c.eval.ks)
        if judge_cfg.max_prompt_tokens and ft.max_len < judge_cfg.max_prompt_tokens + star.max_new_tokens + 8:
            raise benchmark.ConfigError(
                f"config.train.max_len: {ft.max_len} cannot hold a judge prompt (config.judge.max_prompt_tokens="
                f"{judge_cfg.max_prompt_tokens}) plus a judgment (config.star.max_new_tokens={star.max_new_tokens} "
                "and the verdict): training would cut the judge's instructions")
        skipped: list = []
        train, eval_sets = recipe.data(c.data, c.seed, skipped)
        if len(train) < star.parts:
            raise benchmark.ConfigError(f"config.data.train_pairs: {len(train)} training pairs cannot make "
                                        f"{star.parts} parts (config.star.parts)")
        recipe.check_memory(c, ft, sample_length=(judge_cfg.max_prompt_tokens or ft.max_len) + star.max_new_tokens)
        return star, ft, judge_cfg, ks, train, eval_sets, skipped, recipe.mesh(c)

    run, prepared, done = recipe.open_run(c, workdir, prepare)
    if done is not None:
        return done
    star, ft, judge_cfg, ks, train, eval_sets, data_skipped, mesh = prepared
    model = recipe.load(c, mesh)
    engine = recipe.engine(c, model, mesh)
    print(f"{star.method}: {len(train)} training pairs in {star.parts} parts, "
          + ", ".join(f"{k} {len(v)} pairs" for k, v in eval_sets.items()) + f"; run directory {run.dir}", flush=True)
    params, rows, stopped = run_loop(run, model, engine, star, ft, judge_cfg, train, eval_sets, seed=c.seed,
                                     ks=ks, progress=progress, mesh=mesh)
    export = recipe.export(run, params, model)
    extra = {"mesh": dict(mesh.shape) if mesh is not None else None, "method": star.method, "preset": c.preset, "verdict_mode": star.verdict, "stopped": stopped,
             "data_rows_skipped": recipe.skip_counts(data_skipped),
             "export": export, "training_pairs": len(train), "eval_pairs": {k: len(v) for k, v in eval_sets.items()}}
    recipe.write_report(run, rows, title=f"{star.method} ({c.preset}, verdict mode: {star.verdict})", extra=extra)
    return run.finish("report", {"rows": rows, **extra})
