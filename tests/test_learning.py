"""Every objective and every STaR method learns, in the direction of the labels: on the tiny random model and a
trivially learnable judging task, held-out accuracy goes from near chance to >= 0.9.

The task: a question and two answers, the better one "yes", the worse "no". Its label is readable at a fixed
place in the judge prompt, so a 2-layer model learns it in a few dozen steps. The untrained model leans one way
on it (held-out accuracy far from 1, checked: usually near 0, which the training must then reverse), and a
judge that ignored the answers would score exactly 0.5 (both orders are averaged), so >= 0.9 means it learned
to read the answers in the direction of the labels. (Answers made of random words with several "good" and
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
import random

import jax
import jax.numpy as jnp
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
    """Held-out accuracy of the judge `cfg` with `params` (and the reward `head` for bt / pairrm)."""
    if cfg.method in ("cot", "genrm"):
        engine.set_params(params)
        judge = api.Judge(model, cfg, engine=engine)
    else:
        judge = api.Judge(dataclasses.replace(model, params=params), cfg, head=head)
    return benchmark.evaluate(judge, HELD_OUT, ks=(1,), progress=False)["accuracy"]


OPTIM = train.OptimConfig(learning_rate=3e-3, warmup_fraction=0.0, weight_decay=0.0, total_steps=1000)
_STEPS: dict = {}  # loss kind -> the jitted train step, compiled once for all the tests


def fit(model, records, kind, *, epochs, head=None):
    """Trains the model (and `head`) on `records` of `kind` for `epochs`; returns the trained params
    ({"model", "head"} with a head). The schedule is fixed at 1000 steps (lr ~ constant over the few dozen taken
    here), so that every test of a kind runs the same compiled step."""
    pipe = Pipeline(records, kind, model.tokenizer, max_len=MAX_LEN, batch_size=8, buckets=(MAX_LEN,),
                    epochs=epochs, train_eos=True, drop_remainder=False, progress=False)
    if kind in ("dpo", "ipo"):
        pipe.attach_reference(losses.reference_logprobs(model.params, model.config, pipe.sequential_batches(),
                                                        progress=False))
    optimizer = train.make_optimizer(OPTIM)
    if kind not in _STEPS:
        _STEPS[kind] = train.make_train_step(losses.make_loss_fn(kind, model.config), optimizer)
    trainable = {"model": model.params, **({"head": head} if head is not None else {})}
    state = train.init_state(jax.tree.map(jnp.copy, trainable), optimizer)
    state = train.train(state, _STEPS[kind], pipe.iterator(), num_steps=len(pipe), progress=False)
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
    params = fit(model, baselines.genrm_records(train_pairs()), "sft", epochs=3)
    learns(before(model, engine, GENRM), accuracy(model, engine, params, GENRM))


def _rationale_records(pairs_):
    """CoT-GenRM (Eq. 8) records: the judge prompt in both orders, a fixed short rationale, the true verdict."""
    return [{"messages": prompts.judge(r["prompt"], a, b), "target": prompts.with_verdict("ok", label)}
            for r in pairs_ for a, b, label in ((r["chosen"], r["rejected"], "A"), (r["rejected"], r["chosen"], "B"))]


def test_rationale_and_verdict_sft_learns(model, engine):
    params = fit(model, _rationale_records(train_pairs()), "sft", epochs=3)
    learns(before(model, engine, COT), accuracy(model, engine, params, COT))


def _verdict_pairs(pairs_):
    """DPO / IPO on the verdict: the true verdict token preferred to the other one, both orders."""
    return [{"messages": prompts.genrm(r["prompt"], a, b), "chosen": w, "rejected": lo}
            for r in pairs_ for a, b, w, lo in ((r["chosen"], r["rejected"], "A", "B"),
                                                (r["rejected"], r["chosen"], "B", "A"))]


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_preference_optimisation_learns(model, engine, kind):
    params = fit(model, _verdict_pairs(train_pairs()), kind, epochs=6)  # one verdict token: a weak signal
    learns(before(model, engine, GENRM), accuracy(model, engine, params, GENRM))


@pytest.mark.parametrize("kind", ["bt", "pairrm"])
def test_reward_head_learns(model, engine, kind):
    """Bradley-Terry and PairRM: a fresh scalar head trained with the model (baselines.pair_records)."""
    cfg = api.JudgeConfig(method=kind, position="both", max_len=MAX_LEN, batch_size=16)
    # a zero head scores every answer alike: the untrained judge is at exactly 0.5, whatever the random model
    head = jax.tree.map(jnp.zeros_like, heads.init(jax.random.PRNGKey(0), model.config))
    out = fit(model, baselines.pair_records(train_pairs()), kind, epochs=3, head=head)
    learns(before(model, engine, cfg, head), accuracy(model, engine, out["model"], cfg, out["head"]))


# ------------------------------------------------------------------------------------------- STaR methods


# method -> (selection, loss, epochs). SFT on the tiny model's judgments learns a verdict among random rationale
# bytes, a weak signal: these epoch counts pass here, and fewer or more can fall short (0.34 for star_sft at 10).
SELECT = {"star_sft": (selection.star_sft, "sft", 6), "star_dpo": (selection.star_dpo, "dpo", 3),
          "rationalizer": (selection.rationalized, "sft", 10)}


@pytest.mark.parametrize("method", list(SELECT))
def test_star_method_learns(model, engine, tmp_path, method):
    """One STaR iteration: judgments sampled from the untrained judge (4 per pair, temperature 1; hinted for the
    Rationalizer), the method's selection, training, then the evaluation judge."""
    engine.set_params(model.params)
    sampler = api.Judge(model, dataclasses.replace(COT, k=2, temperature=1.0, seed=11), engine=engine)
    lines = star_sample.sample(sampler, train_pairs(48), str(tmp_path / "samples.jsonl"),
                               hinted=method == "rationalizer", chunk=48, progress=False)
    summary = star_sample.summary(lines)
    assert 0.2 < summary["correct_rate"] < 0.8, summary  # the untrained judge guesses
    choose, kind, epochs = SELECT[method]
    params = fit(model, choose(lines), kind, epochs=epochs)
    learns(before(model, engine, COT), accuracy(model, engine, params, COT))
