"""Every objective and every STaR method learns, in the direction of the labels: on the tiny random model and a
trivially learnable judging task, held-out accuracy goes from near chance to >= 0.9.

The task: a question and two answers, the better one "yes", the worse "no". Its label is readable at a fixed
place in the judge prompt, so a 2-layer model learns it in a few dozen steps. Accuracy counts every verdict,
each answer order on its own (`accuracy`): the untrained model leans one way (checked: <= 0.75), a judge that
ignores the answers or always picks one position scores 0.5, so >= 0.9 means it learned to read the answers in
the direction of the labels. (Answers made of random words with several "good" and
"bad" endings put the untrained judge nearer 0.5 but took the tiny model hundreds of steps to learn.)

Each test goes through the library's own path: training records built as the methods build them (baselines'
record builders, STaR's sampling and selection), the training pipeline, the loss of its kind, the train step and
loop (what finetune.fit runs; test_finetune covers fit's own checkpointing and resumption), and the evaluation
judge (api.Judge via benchmark.evaluate: both answer orders, P(A) from the verdict tokens or the forced verdict,
or the reward head). One train step per loss kind is compiled and shared by the tests: compilation, not
training, is most of their time.
A test that passed with the labels swapped, the DPO sign flipped or the verdict ignoring P(A) would prove
nothing: each of those mutations makes these tests fail (see the closing note of issue 23).
"""
import dataclasses
import json
import os
import random
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrm_jax import baselines, losses, train
from genrm_jax.data.pipeline import Pipeline
from genrm_jax.io import load_model
from genrm_jax.judge import api, benchmark, prompts
from genrm_jax.models import heads
from genrm_jax.sampling import Engine
from genrm_jax.star import judgments as star_sample
from genrm_jax.star import selection

WORDS = "red blue green cat dog sun moon tree rock fish bird leaf".split()
RATIONALE_TOKENS = 2  # the tiny model's "rationale": a couple of sampled bytes before the forced verdict
MAX_LEN = 384  # every training sequence fits (the prompts below are ~250 byte tokens)


def pairs(n: int, seed: int) -> list[dict]:
    """Preference pairs in the sources format: random questions, the chosen answer "yes", the rejected "no"."""
    rng = random.Random(seed)
    return [{"id": f"{seed}-{i}", "prompt": [{"role": "user", "content": f"Is the {rng.choice(WORDS)} "
                                                                          f"{rng.choice(WORDS)}?"}],
             "chosen": "yes", "rejected": "no", "subset": "yes-no", "category": "yes-no", "source": f"test:{i}"}
            for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def short_instructions():
    """The judge prompts' instructions, shortened: with a byte-level tokenizer the real ones are ~900 tokens,
    which would make every step of these tests 4x longer and teach a 2-layer model nothing more. The builders,
    templates, verdict formats and forced verdicts are the library's own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prompts, "JUDGE_SYSTEM", "Judge A vs B. End with [[A]] or [[B]].")
        mp.setattr(prompts, "GENRM_SYSTEM", "Judge A vs B. Reply A or B.")
        mp.setattr(prompts, "RATIONALIZER_TASK", "{winner} beats {loser}. End with [[{winner}]].")
        yield


HELD_OUT = pairs(32, seed=2)


def train_pairs(n: int = 32) -> list[dict]:
    """The training pairs every test learns from (disjoint from HELD_OUT: another seed)."""
    return pairs(n, seed=1)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random")


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, max_batch=32)


GENRM = api.JudgeConfig(method="genrm", position="both")
COT = api.JudgeConfig(method="cot", prompt="judge", temperature=0.0, max_new_tokens=RATIONALE_TOKENS,
                      position="both", verdict="force")


def accuracy(model, engine, params, cfg: api.JudgeConfig, head=None) -> float:
    """Held-out accuracy of every verdict of the judge `cfg` with `params` (and the reward `head` for bt /
    pairrm): each answer order counts on its own, an invalid verdict as wrong (the reports' verdict accuracy,
    evaluation.verdict_scores, counts it 1/2). The reports' accuracy averages P(chosen) over the two orders, and on
    this task, where every pair is the same two answers, a judge that always picks the second-shown answer scores
    0 or 1 on it by a margin of a few thousandths: a Rationalizer trained with the labels swapped reached "1.0"
    that way. Per verdict, a position-biased judge scores 0.5."""
    if cfg.method in ("cot", "genrm"):
        engine.set_params(params)
        judge = api.Judge(model, cfg, engine=engine)
    else:
        judge = api.Judge(dataclasses.replace(model, params=params), cfg, head=head)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "judgments.jsonl")
        benchmark.evaluate(judge, HELD_OUT, ks=(1,), progress=False, judgments_path=path)
        votes = np.array([json.loads(line)["votes_chosen"] for line in open(path)])
    assert votes.shape == (len(HELD_OUT), 2, cfg.k)  # both orders, every pair judged
    return float(np.mean(votes == 1))  # an invalid verdict (-1) counts as wrong


OPTIM = train.OptimConfig(learning_rate=3e-3, warmup_fraction=0.0, weight_decay=0.0, total_steps=1000)
_STEPS: dict = {}  # (loss kind, learning rate) -> the jitted train step, compiled once for all the tests


def fit(model, records, kind, *, epochs, head=None, train_eos=True, init=None, lr=OPTIM.learning_rate):
    """Trains the model (and `head`) on `records` of `kind` for `epochs`, from `init` (default: the model's own
    params; also the DPO / IPO reference); returns the trained params ({"model", "head"} with a head). The schedule
    is fixed at 1000 steps (lr ~ constant over the few dozen taken here), so that every test of a kind runs the
    same compiled step (one per loss kind and learning rate)."""
    init = model.params if init is None else init
    pipe = Pipeline(records, kind, model.tokenizer, max_len=MAX_LEN, batch_size=8, buckets=(MAX_LEN,),
                    epochs=epochs, train_eos=train_eos, drop_remainder=False, progress=False)
    if kind in ("dpo", "ipo"):
        pipe.attach_reference(losses.reference_logprobs(init, model.config, pipe.sequential_batches(),
                                                        progress=False))
    optimizer = train.make_optimizer(dataclasses.replace(OPTIM, learning_rate=lr))
    if (kind, lr) not in _STEPS:
        _STEPS[kind, lr] = train.make_train_step(losses.make_loss_fn(kind, model.config), optimizer)
    trainable = {"model": init, **({"head": head} if head is not None else {})}
    state = train.init_state(jax.tree.map(jnp.copy, trainable), optimizer)
    state = train.train(state, _STEPS[kind, lr], pipe.iterator(), num_steps=len(pipe), progress=False)
    return state.params if head is not None else state.params["model"]


_BEFORE: dict = {}


def before(model, engine, cfg: api.JudgeConfig, head=None) -> float:
    """The untrained judge's held-out accuracy (computed once per judge)."""
    key = (cfg, head is not None)
    if key not in _BEFORE:
        _BEFORE[key] = accuracy(model, engine, model.params, cfg, head)
    return _BEFORE[key]


def learns(before: float, after: float):
    assert before <= 0.75, f"the untrained judge already scores {before}: the task tests nothing"
    assert after >= 0.9, f"held-out accuracy {before:.3f} -> {after:.3f}: did not learn"


# --------------------------------------------------------------------------------------------- objectives


def test_verdict_token_sft_learns(model, engine):
    """GenRM (Eq. 7): SFT on the verdict token, both orders (baselines.genrm_records); judged by P(A) vs P(B)."""
    params = fit(model, baselines.genrm_records(train_pairs()), "sft", epochs=10, train_eos=False)
    learns(before(model, engine, GENRM), accuracy(model, engine, params, GENRM))


def _rationale_records(pairs_):
    """CoT-GenRM (Eq. 8) records: the judge prompt in both orders, a fixed short rationale, the true verdict."""
    return [{"messages": prompts.judge(r["prompt"], a, b), "target": prompts.with_verdict("ok", label)}
            for r in pairs_ for a, b, label in ((r["chosen"], r["rejected"], "A"), (r["rejected"], r["chosen"], "B"))]


def test_rationale_and_verdict_sft_learns(model, engine):
    params = fit(model, _rationale_records(train_pairs()), "sft", epochs=10)
    learns(before(model, engine, COT), accuracy(model, engine, params, COT))


def _verdict_pairs(pairs_):
    """DPO / IPO on the verdict: the true verdict token preferred to the other one, both orders."""
    return [{"messages": prompts.genrm(r["prompt"], a, b), "chosen": w, "rejected": lo}
            for r in pairs_ for a, b, w, lo in ((r["chosen"], r["rejected"], "A", "B"),
                                                (r["rejected"], r["chosen"], "B", "A"))]


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_preference_optimisation_learns(model, engine, kind):
    # the verdict token alone, as GenRM trains (with EOS in the completions IPO meets its margin on EOS after
    # the right letter, leaving the letter itself at chance or worse: per-verdict accuracy 0.0 at 12 epochs)
    params = fit(model, _verdict_pairs(train_pairs()), kind, epochs=12, train_eos=False)
    learns(before(model, engine, GENRM), accuracy(model, engine, params, GENRM))


@pytest.mark.parametrize("kind", ["bt", "pairrm"])
def test_reward_head_learns(model, engine, kind):
    """Bradley-Terry and PairRM: a fresh scalar head trained with the model (baselines.pair_records)."""
    cfg = api.JudgeConfig(method=kind, position="both", max_len=MAX_LEN, batch_size=16)
    # a zero head scores every answer alike: the untrained judge is at exactly 0.5, whatever the random model
    head = jax.tree.map(jnp.zeros_like, heads.init(jax.random.PRNGKey(0), model.config))
    out = fit(model, baselines.pair_records(train_pairs()), kind, epochs=10, head=head)
    learns(before(model, engine, cfg, head), accuracy(model, engine, out["model"], cfg, out["head"]))


# ------------------------------------------------------------------------------------------- STaR methods


# A STaR iteration starts from a judge that already writes its format (an instruct model) but guesses: the random
# model's own "rationales" are random bytes (often invalid UTF-8, re-encoded longer), after which a 2-layer model
# cannot find the answers again, and pairs of them let DPO meet its margin on the bytes, not the verdict (checked:
# per-verdict accuracy stayed 0.5 for STaR-DPO at 16 epochs). So the tests start from `formatted`: the random
# model after SFT on "ok" + a verdict drawn at random (independent of the answers): it writes "ok", then guesses.
FORMAT_EPOCHS = 10


@pytest.fixture(scope="module")
def formatted(model):
    rng = random.Random(5)
    records = [{"messages": prompts.judge(r["prompt"], a, b), "target": prompts.with_verdict("ok", rng.choice("AB"))}
               for r in pairs(32, seed=3) for a, b in ((r["chosen"], r["rejected"]), (r["rejected"], r["chosen"]))]
    return fit(model, records, "sft", epochs=FORMAT_EPOCHS)


# method -> (selection, loss, epochs, learning rate). DPO at 3e-3 meets its margin by making both judgments
# unlikely (rewards -30 / -40): the judge stops writing "ok" and its verdict after the new context comes out wrong
# (per-verdict accuracy 0.03); at 1e-3 it learns the verdict (0.875 at 6 epochs, 1.0 at 12).
SELECT = {"star_sft": (selection.star_sft, "sft", 10, OPTIM.learning_rate),
          "star_dpo": (selection.star_dpo, "dpo", 12, 1e-3),
          "rationalizer": (selection.rationalized, "sft", 10, OPTIM.learning_rate)}


@pytest.mark.parametrize("method", list(SELECT))
def test_star_method_learns(model, engine, formatted, tmp_path, method):
    """One STaR iteration from the `formatted` judge: judgments sampled from it (4 per pair, temperature 1;
    hinted for the Rationalizer), the method's selection, training (DPO's reference: the same judge), then the
    evaluation judge."""
    engine.set_params(formatted)
    sampler = api.Judge(model, dataclasses.replace(COT, k=2, temperature=1.0, seed=11), engine=engine)
    lines = star_sample.sample(sampler, train_pairs(48), str(tmp_path / "samples.jsonl"),
                               hinted=method == "rationalizer", chunk=48, progress=False)
    summary = star_sample.summary(lines)
    assert 0.2 < summary["correct_rate"] < 0.8, summary  # the judge guesses
    choose, kind, epochs, lr = SELECT[method]
    params = fit(model, choose(lines), kind, epochs=epochs, init=formatted, lr=lr)
    learns(accuracy(model, engine, formatted, COT), accuracy(model, engine, params, COT))
