"""Orbax checkpoints: a run resumed from step 5 continues with exactly the losses of an uninterrupted run."""
import json

import jax
import numpy as np
from chartok import CharTokenizer
from conftest import tiny_config

from genrm_jax import losses, train
from genrm_jax.checkpoint import Checkpointer
from genrm_jax.data.pipeline import Pipeline
from genrm_jax.models import llama

WORDS = "the cat sat on a mat while dogs ran far away from home".split()


def _records(n=24, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS, size=rng.integers(2, 6)))
        out.append({"messages": [{"role": "user", "content": q}], "target": "AB"[i % 2] + " " + WORDS[i % 12]})
    return out


CFG = tiny_config()
OPT = train.make_optimizer(train.OptimConfig(learning_rate=3e-3, total_steps=10))
STEP = train.make_train_step(losses.make_loss_fn("sft", CFG), OPT)  # compiled once, shared by every run


def _run(workdir, num_steps, *, init_seed, resume):
    pipe = Pipeline(_records(), "sft", CharTokenizer(), max_len=48, buckets=(48,), batch_size=4, seed=3,
                    epochs=4, progress=False)
    it = pipe.iterator()
    state = train.init_state({"model": llama.init(jax.random.PRNGKey(init_seed), CFG)}, OPT, seed=init_seed)
    ckpt = Checkpointer(str(workdir / "ckpt"), every=5, keep=2)
    if resume:
        state = ckpt.restore(state, it)
    state = train.train(state, STEP, it, num_steps=num_steps, workdir=str(workdir), checkpointer=ckpt,
                        progress=False)
    return state, ckpt


def _losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, open(workdir / "metrics.jsonl"))}


def test_resume_at_step_5_gives_identical_losses(tmp_path):
    full, interrupted = tmp_path / "full", tmp_path / "interrupted"
    _run(full, 10, init_seed=0, resume=False)
    _, ckpt = _run(interrupted, 5, init_seed=0, resume=False)
    assert ckpt.all_steps() == [5]
    # a different init seed proves the weights, rng and data position all come from the checkpoint
    state, ckpt = _run(interrupted, 10, init_seed=7, resume=True)
    assert int(state.step) == 10
    a, b = _losses(full), _losses(interrupted)
    assert sorted(b) == list(range(1, 11))
    for s in range(6, 11):
        assert a[s] == b[s], (s, a[s], b[s])
    assert len({a[s] for s in range(1, 11)}) == 10  # the losses move: the check is not vacuous
    assert ckpt.all_steps() == [5, 10]


def test_keeps_last_k_and_restore_without_checkpoint_fails(tmp_path):
    import pytest

    state = train.init_state({"model": llama.init(jax.random.PRNGKey(0), CFG)}, OPT)
    ckpt = Checkpointer(str(tmp_path), every=2, keep=2)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.restore(state)
    for s in range(1, 8):
        ckpt.maybe_save(s, state._replace(step=np.int32(s)))
    assert ckpt.all_steps() == [4, 6]
    restored = ckpt.restore(state)
    assert int(restored.step) == 6
    np.testing.assert_array_equal(restored.params["model"]["embed"], state.params["model"]["embed"])
