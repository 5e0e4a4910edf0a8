"""The STaR loop, shared by STaR-SFT, STaR-DPO and the Rationalizer (and Self-Rationalization next):

    the training pairs are split into `star.parts` disjoint parts (seeded); iteration t
      1. samples `star.samples` judgments per pair of part t from the current judge, half in each answer order
         (temperature 1.0, top-p 0.95 by default): <workdir>/samples/iter_<t>.jsonl;
      2. selects training records from them (star/selection.py, pure): <workdir>/train/iter_<t>.jsonl;
      3. fine-tunes from the current weights (finetune.fit; DPO's reference = the model at the start of the
         iteration): <workdir>/train/iter_<t>/ (checkpoints, metrics);
      4. evaluates the new judge on the held-out sets (stage eval_<t>; with `config.eval.every_iteration=false`
         only after the last iteration),
    and moves on with the new weights, which the sampling engine takes without recompiling (Engine.set_params).

Every step is a stage of the run directory: a rerun after a kill skips finished stages, resumes sampling at
the first pair not yet written and training at its last checkpoint. An iteration whose samples give nothing to
train on (no correct judgment; for DPO no pair with both a correct and an incorrect one) is reported and ends
the loop cleanly instead of training on an empty set.
"""
from __future__ import annotations

import dataclasses

from genrm_jax import config_util, finetune, losses, methods, report, runs
from genrm_jax.data import splits
from genrm_jax.judge import api, benchmark
from genrm_jax.star import judgments as sampling
from genrm_jax.star import selection


@dataclasses.dataclass(frozen=True)
class StarConfig:
    """The loop's settings (config group `star`); the method (`config.method`) says what is sampled and trained."""
    iterations: int = 3
    parts: int = 3
    samples: int = 8               # judgments per pair, half in each answer order
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 256
    verdict: str = "force"         # "force": a verdict every time (api.JudgeConfig.verdict); "parse": the paper's
    chunk: int = 8                 # pairs per sampling call (and per line flush)

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"config.star.{field}={getattr(self, field)!r}: {why}")

        if self.samples < 2 or self.samples % 2:
            bad("samples", "expected an even number >= 2 (half in each answer order)")
        if self.iterations < 1 or self.parts < self.iterations:
            bad("iterations", f"expected 1 <= iterations <= parts ({self.parts}): each iteration uses a new part")

    @classmethod
    def from_config(cls, cfg) -> "StarConfig":
        return config_util.from_config(cls, cfg, "config.star")

    def check(self, method: methods.Method) -> None:
        """What the method asks of the loop's settings."""
        if losses.spec(method.loss).pairs and self.samples < 4:  # pairs from one prompt: 2 judgments per order
            raise ValueError(f"config.star.samples={self.samples!r}: expected >= 4: {method.name}'s preference "
                                 "pairs need two judgments of the same prompt in each order")


# Each STaR method's records from its (plain, hinted) judgment lines (star/selection.py, pure).
@methods.register_records("star_sft")
def _star_sft(plain, hinted):
    return selection.star_sft(plain)


@methods.register_records("star_dpo")
def _star_dpo(plain, hinted):
    return selection.star_dpo(plain)


@methods.register_records("rationalized")
def _rationalized(plain, hinted):
    return selection.rationalized(hinted)


@methods.register_records("rationalized_pairs")
def _rationalized_pairs(plain, hinted):
    return selection.rationalized_pairs(hinted, plain)


def sampling_judge(model, engine, star: StarConfig, judge_cfg: api.JudgeConfig, seed: int) -> api.Judge:
    """The judge that samples training judgments: the evaluation judge's prompt and limits, STaR's sampling."""
    cfg = dataclasses.replace(judge_cfg, method="cot", position="both", k=star.samples // 2,
                              temperature=star.temperature, top_p=star.top_p, max_new_tokens=star.max_new_tokens,
                              verdict=star.verdict, seed=seed)
    return api.Judge(model, cfg, engine=engine)


def iteration_records(method: methods.Method, star: StarConfig, judge, part: list[dict], run: runs.Run, t: int,
                      progress: bool):
    """(training records, sampling summary) of iteration t: the method's sampling, then its pure selection."""
    plain = hinted = None
    if "plain" in method.samples:
        plain = sampling.sample(judge, part, run.path("samples", f"iter_{t}.jsonl"), chunk=star.chunk,
                                progress=progress)
    if "hinted" in method.samples:
        hinted = sampling.sample(judge, part, run.path("samples", f"iter_{t}_hinted.jsonl"), hinted=True,
                                 chunk=star.chunk, progress=progress)
    records = methods.records(method)(plain, hinted)
    summary = {"sampled": sampling.summary(plain)} if plain is not None else {}
    if hinted is not None:
        summary["hinted"] = sampling.summary(hinted)
    summary["training_records"] = len(records)
    return records, summary


def run_loop(run: runs.Run, model, engine, method: methods.Method, star: StarConfig, ft: finetune.FinetuneConfig,
             eval_judge_cfg, train: list[dict], eval_sets: dict, *, seed: int = 0, ks=(1,), progress: bool = True,
             mesh=None, eval_cfg=None):
    """Runs (or resumes) every iteration; returns (final params, report rows: one per evaluation, iteration
    summaries included, and a note when the loop stopped early)."""
    parts = splits.parts(train, star.parts, seed)
    judge = api.Judge(model, eval_judge_cfg, engine=engine)
    rows = [{"stage": "eval_0", "iteration": 0,
             **report.headline(report.evaluate(run, "eval_0", judge, eval_sets, seed=seed, ks=ks,
                                               progress=progress, untrained=True))}]
    # bias before training and after the last iteration (judge/bias.py; config.eval.bias=false skips it)
    bias_set = eval_sets.get(splits.IN_DISTRIBUTION, [])
    rows[0].update(report.bias_headline(report.bias_stage(run, "bias_0", judge, bias_set, eval_cfg or {})))
    params, stopped = model.params, None
    for t in range(1, star.iterations + 1):
        engine.set_params(params)
        sampler = sampling_judge(model, engine, star, eval_judge_cfg, seed=seed + 1000 * t)
        records, summary = iteration_records(method, star, sampler, parts[t - 1], run, t, progress)
        run.log({"event": "sampled", "iteration": t, **runs.flatten(summary)})
        if not records:
            stopped = (f"iteration {t}: nothing to train on ({summary}); "
                       + ("no pair had both a correct and an incorrect judgment in the same answer order"
                          if ft.kind in ("dpo", "ipo")
                          else "no judgment was correct") + ": the loop stops here")
            print(stopped, flush=True)
            if rows[-1]["stage"] == f"train_{t - 1}":  # every_iteration=false left the last judge unevaluated
                rows[-1].update(stage=f"eval_{t - 1}", **report.headline(report.evaluate(
                    run, f"eval_{t - 1}", judge, eval_sets, seed=seed, ks=ks, progress=progress)))
            break
        if run.main:
            runs.write_jsonl(run.path("train", f"iter_{t}.jsonl"), records)
        ft_t = dataclasses.replace(ft, seed=ft.seed + t)
        params, info = finetune.fit(params, records, ft_t, model.config, model.tokenizer,
                                    run.path("train", f"iter_{t}"), progress=progress, mesh=mesh)
        run.finish(f"train_{t}", info)
        run.log({"event": "trained", "iteration": t, "steps": info["steps"], "final_loss": info["final_loss"]})
        engine.set_params(params)
        sampled = summary.get("sampled", summary.get("hinted", {}))
        if report.evaluates_iteration(eval_cfg, t, star.iterations):
            rep = report.evaluate(run, f"eval_{t}", judge, eval_sets, seed=seed, ks=ks, progress=progress)
            row = {"stage": f"eval_{t}", "iteration": t, **report.headline(rep)}
        else:  # the iteration's counts without an evaluation
            row = {"stage": f"train_{t}", "iteration": t}
        rows.append({**row,
                     "pairs": sampled.get("pairs"), "pairs_with_correct": sampled.get("pairs_with_correct"),
                     "sample_invalid_rate": sampled.get("invalid_rate"),
                     "training_records": summary["training_records"], "train_steps": info["steps"],
                     "train_final_loss": info["final_loss"]})
    if len(rows) > 1:  # the engine holds the last iteration's weights
        rows[-1].update(report.bias_headline(report.bias_stage(run, f"bias_{rows[-1]['iteration']}", judge, bias_set,
                                                               eval_cfg or {})))
    return params, rows, stopped


# ------------------------------------------------------------------------------- the experiment's part


class _Part:
    """The STaR loop as the experiment skeleton's part (genrm_jax/experiment.py)."""

    @staticmethod
    def prepare(setup):
        star = StarConfig.from_config(setup.c.star)
        star.check(setup.method)
        if len(setup.train) < star.parts:
            raise benchmark.ConfigError(f"config.data.train_pairs: {len(setup.train)} training pairs cannot make "
                                        f"{star.parts} parts (config.star.parts)")
        setup.sampled = (setup.judge.max_prompt_tokens or 0, star.max_new_tokens,
                         "config.judge.max_prompt_tokens, config.star.max_new_tokens")
        return star

    @staticmethod
    def engine(method) -> bool:
        return True

    @staticmethod
    def run(run, setup, model, engine, progress):
        star = setup.part
        params, rows, stopped = run_loop(run, model, engine, setup.method, star, setup.ft, setup.judge, setup.train,
                                         setup.eval_sets, seed=setup.seed, ks=setup.ks, progress=progress,
                                         mesh=setup.mesh, eval_cfg=setup.c.eval)
        return report.Outcome(params, rows, {"verdict_mode": star.verdict, "stopped": stopped},
                       title=f"{setup.method.name} ({setup.c.preset}, verdict mode: {star.verdict})")


PART = _Part()
