"""The train step: exact gradient accumulation, the optimiser defaults, the loop's logs and its NaN guard."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from genrm_jax import losses, train
from genrm_jax.checkpoint import Checkpointer
from genrm_jax.models import llama


def _sft_batch(n, length, seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 128, size=(n, length)).astype(np.int32)
    # uneven target lengths, so per-micro-batch means would differ from the token mean of the whole batch
    loss_mask = np.zeros_like(tokens)
    for i in range(n):
        loss_mask[i, rng.integers(2, length - 1):] = 1
    mask = np.ones_like(tokens)
    mask[1, -3:] = 0
    loss_mask[1, -3:] = 0
    return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_grad_accumulation_4x2_equals_batch_8(kind):
    cfg = tiny_config()
    params = {"model": llama.init(jax.random.PRNGKey(0), cfg)}
    if kind == "sft":
        batch = _sft_batch(8, 16, 0)
    else:
        one = _sft_batch(16, 16, 1)
        batch = {k: v.reshape(8, 2, 16) for k, v in one.items()}
        batch["ref_logps"] = np.random.default_rng(2).normal(size=(8, 2)).astype(np.float32) - 60
    sgd = optax.sgd(1.0)  # new params = params - grads: compares gradients directly
    loss_fn = losses.make_loss_fn(kind, cfg)
    outs = []
    for accum in (1, 4):
        step = train.make_train_step(loss_fn, sgd, accum_steps=accum, donate=False)
        state, metrics = step(train.init_state(params, sgd), batch, jax.random.PRNGKey(0))
        outs.append((state.params, metrics))
    (p1, m1), (p4, m4) = outs
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert abs(float(m1["loss"]) - float(m4["loss"])) <= 1e-5
    assert float(m1["weight"]) == float(m4["weight"])
    assert float(m1["grad_norm"]) > 0


def test_accumulation_rejects_uneven_split():
    cfg = tiny_config()
    sgd = optax.sgd(1.0)
    step = train.make_train_step(losses.make_loss_fn("sft", cfg), sgd, accum_steps=3, donate=False)
    state = train.init_state({"model": llama.init(jax.random.PRNGKey(0), cfg)}, sgd)
    with pytest.raises(ValueError, match="does not split into 3"):
        step(state, _sft_batch(8, 8, 0), jax.random.PRNGKey(0))


def test_optimizer_defaults_follow_the_paper():
    cfg = train.OptimConfig(total_steps=100)
    assert (cfg.learning_rate, cfg.b1, cfg.b2, cfg.weight_decay, cfg.warmup_fraction) == (1e-6, 0.9, 0.95, 0.1, 0.1)
    opt = train.make_optimizer(cfg)
    # lr is 0 at step 0, peaks at the end of the 10-step warm-up, decays to 0 at the end
    params = {"w": jnp.ones((2, 2)), "norm": jnp.ones((2,))}
    state = opt.init(params)  # the schedule is probed through the size of unit-gradient updates
    grads = {"w": jnp.ones((2, 2)), "norm": jnp.ones((2,))}
    steps = []
    p = params
    for _ in range(12):
        u, state = opt.update(grads, state, p)
        steps.append(float(jnp.abs(u["norm"][0])))
    assert steps[0] == 0.0 and steps[10] > steps[5] > 0
    assert steps[10] == pytest.approx(1e-6, rel=1e-3)
    with pytest.raises(ValueError, match="optimiser: unknown settings"):
        train.OptimConfig.from_config({"lr": 1e-5})
    # a fit too short for one warm-up step starts at the peak: its steps are not wasted at lr 0
    short = train.learning_rate_schedule(train.OptimConfig(learning_rate=1e-5, total_steps=2))
    assert float(short(0)) == pytest.approx(1e-5) and 0 < float(short(1)) < 1e-5


def test_weight_decay_skips_norms():
    opt = train.make_optimizer(train.OptimConfig(learning_rate=1.0, warmup_fraction=0.0, total_steps=10,
                                                 weight_decay=0.5))
    params = {"w": jnp.ones((2, 2)), "norm": jnp.ones((2,))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    u, _ = opt.update(zeros, opt.init(params), params)
    assert float(jnp.abs(u["w"]).max()) > 0 and float(jnp.abs(u["norm"]).max()) == 0


def test_loop_logs_metrics_and_stops_on_nan_naming_step_and_checkpoint(tmp_path):
    cfg = tiny_config()
    base = losses.make_loss_fn("sft", cfg)

    def poisoned(params, batch, rng):
        out = base(params, batch, rng)
        value = out.value * batch["scale"][0]
        return losses.Loss(value, out.weight, {**out.metrics, "loss": value})

    opt = train.make_optimizer(train.OptimConfig(learning_rate=1e-3, total_steps=10))
    step = train.make_train_step(poisoned, opt)
    state = train.init_state({"model": llama.init(jax.random.PRNGKey(0), cfg)}, opt)

    def batches():
        for i in range(1, 11):
            b = _sft_batch(2, 8, i)
            b["scale"] = np.full((2,), np.nan if i == 5 else 1.0, np.float32)
            yield b

    ckpt = Checkpointer(str(tmp_path / "ckpt"), every=2, keep=2)
    with pytest.raises(train.NonFiniteLossError) as e:
        train.train(state, step, batches(), num_steps=10, workdir=str(tmp_path), checkpointer=ckpt, progress=False)
    msg = str(e.value)
    assert "step 5" in msg and os.path.join(str(tmp_path / "ckpt"), "4") in msg, msg
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["tok_s"] > 0 and "grad_norm" in r for r in rows)
    assert ckpt.all_steps() == [2, 4]


def test_remat_policies_leave_gradients_unchanged():
    cfg = tiny_config()
    params = {"model": llama.init(jax.random.PRNGKey(0), cfg)}
    batch = _sft_batch(2, 8, 5)
    grads = []
    for remat, policy in ((False, ""), (True, ""), (True, "dense"), (True, "dots_with_no_batch_dims_saveable")):
        fn = losses.make_loss_fn("sft", cfg.replace(remat=remat, remat_policy=policy))
        grads.append(jax.grad(lambda p: fn(p, batch, None).value)(params))
    for g in grads[1:]:
        for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(g)):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_bf16_compute_keeps_fp32_master_weights_and_reports_lr():
    cfg = tiny_config(compute_dtype="bfloat16")
    ocfg = train.OptimConfig(learning_rate=1e-3, total_steps=10)
    opt = train.make_optimizer(ocfg)
    step = train.make_train_step(losses.make_loss_fn("sft", cfg), opt)  # the lr is read from the optimiser state
    state = train.init_state({"model": llama.init(jax.random.PRNGKey(0), cfg)}, opt)
    lrs = []
    for i in range(3):
        state, m = step(state, _sft_batch(2, 8, i), jax.random.PRNGKey(i))
        assert np.isfinite(float(m["loss"]))
        lrs.append(float(m["lr"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(1e-3)  # one warm-up step out of ten, then the peak
