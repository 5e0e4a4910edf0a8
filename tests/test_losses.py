"""Losses against independent NumPy references, and the small learning checks of the paper's objectives."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from genrm_jax import losses, train
from genrm_jax.models import heads, llama

RNG = np.random.default_rng(0)


def np_log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_log_sigmoid(x):
    x = np.asarray(x, np.float64)
    return -np.logaddexp(0.0, -x)


def np_token_logprobs(logits, tokens):
    b, t, _ = logits.shape
    out = np.zeros((b, t))
    ls = np_log_softmax(logits)
    for i in range(b):
        for j in range(1, t):
            out[i, j] = ls[i, j - 1, tokens[i, j]]
    return out


def test_token_and_sequence_logprobs_match_numpy():
    logits = RNG.normal(size=(3, 7, 11)).astype(np.float32) * 3
    tokens = RNG.integers(0, 11, size=(3, 7))
    mask = RNG.integers(0, 2, size=(3, 7))
    ref = np_token_logprobs(logits, tokens)
    np.testing.assert_allclose(losses.token_logprobs(jnp.asarray(logits), jnp.asarray(tokens)), ref, atol=1e-5)
    np.testing.assert_allclose(losses.sequence_logprobs(logits, tokens, mask), (ref * mask).sum(-1), atol=1e-5)


def test_sft_matches_numpy():
    logits = RNG.normal(size=(4, 9, 13)).astype(np.float32) * 2
    tokens = RNG.integers(0, 13, size=(4, 9))
    mask = np.zeros((4, 9), np.int32)
    mask[:, 5:] = 1
    mask[2, 3:] = 1
    lp = np_token_logprobs(logits, tokens)
    ref = -(lp * mask).sum() / mask.sum()
    out = losses.sft(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    assert abs(float(out.value) - ref) <= 1e-5
    assert float(out.weight) == mask.sum()
    hits = (logits[:, :-1].argmax(-1) == tokens[:, 1:]) * mask[:, 1:]
    assert abs(float(out.metrics["token_accuracy"]) - hits.sum() / mask.sum()) <= 1e-6


@pytest.mark.parametrize("kind,beta", [("dpo", 1.0), ("dpo", 0.1), ("ipo", 0.4)])
def test_dpo_ipo_match_numpy(kind, beta):
    pc, pr, rc, rr = (RNG.normal(size=16) * 5 - 40 for _ in range(4))
    h_ratio = (pc - rc) - (pr - rr)
    if kind == "dpo":
        ref = -np_log_sigmoid(beta * h_ratio).mean()
        out = losses.dpo(*map(jnp.asarray, (pc, pr, rc, rr)), beta=beta)
        np.testing.assert_allclose(out.metrics["margin"], (beta * h_ratio).mean(), atol=1e-4)
    else:
        ref = ((h_ratio - 1 / (2 * beta)) ** 2).mean()
        out = losses.ipo(*map(jnp.asarray, (pc, pr, rc, rr)), beta=beta)
    assert abs(float(out.value) - ref) <= 1e-5 * max(1.0, abs(ref))
    assert float(out.metrics["accuracy"]) == pytest.approx((h_ratio > 0).mean())
    assert float(out.metrics["chosen_logp"]) == pytest.approx(pc.mean(), rel=1e-6)


def test_bt_and_pairrm_match_numpy():
    c, r = RNG.normal(size=10), RNG.normal(size=10)
    out = losses.bradley_terry(jnp.asarray(c), jnp.asarray(r))
    assert abs(float(out.value) + np_log_sigmoid(c - r).mean()) <= 1e-5
    assert float(out.metrics["accuracy"]) == pytest.approx((c > r).mean())
    s, y = RNG.normal(size=12) * 3, RNG.integers(0, 2, size=12)
    p = 1 / (1 + np.exp(-s))
    ref = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    out = losses.pairrm(jnp.asarray(s), jnp.asarray(y))
    assert abs(float(out.value) - ref) <= 1e-5
    assert float(out.metrics["accuracy"]) == pytest.approx(((s > 0) == (y == 1)).mean())


# ------------------------------------------------------------------------------------ learning checks


def _pair_batch(n, length, rng, prompt_len=6):
    """Pairs sharing a random prompt with different random completions: tokens/mask/loss_mask [n, 2, L]."""
    tokens = rng.integers(3, 128, size=(n, 2, length)).astype(np.int32)
    tokens[:, 1, :prompt_len] = tokens[:, 0, :prompt_len]
    mask = np.ones_like(tokens)
    loss_mask = np.zeros_like(tokens)
    loss_mask[:, :, prompt_len:] = 1
    return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def _fit(kind, params, batch, steps, lr, config, **kw):
    opt = train.make_optimizer(train.OptimConfig(learning_rate=lr, warmup_fraction=0.0, weight_decay=0.0,
                                                 total_steps=10_000))
    step = train.make_train_step(losses.make_loss_fn(kind, config, **kw), opt)
    state = train.init_state(params, opt)
    history = []
    for i in range(steps):
        state, m = step(state, batch, jax.random.PRNGKey(i))
        history.append({k: float(v) for k, v in m.items()})
    return state, history


def test_dpo_starts_at_log2_and_reaches_full_implicit_accuracy():
    cfg = tiny_config()
    params = {"model": llama.init(jax.random.PRNGKey(0), cfg)}
    batch = _pair_batch(8, 16, np.random.default_rng(1))
    ref = np.asarray(losses.pair_logprobs(params["model"], batch, cfg))
    batch["ref_logps"] = ref
    loss_fn = losses.make_loss_fn("dpo", cfg)
    at_init = loss_fn(params, batch, jax.random.PRNGKey(0))
    assert abs(float(at_init.value) - math.log(2)) <= 1e-6
    state, hist = _fit("dpo", params, batch, 15, 3e-3, cfg)
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    final = loss_fn(state.params, batch, jax.random.PRNGKey(0))
    assert float(final.metrics["accuracy"]) == 1.0, hist[-1]
    assert float(final.value) < 0.3


def test_sft_overfits_16_examples():
    cfg = tiny_config()
    rng = np.random.default_rng(2)
    tokens = rng.integers(3, 128, size=(16, 12)).astype(np.int32)
    loss_mask = np.zeros_like(tokens)
    loss_mask[:, 8:] = 1  # the "verdict/rationale" tokens after an 8-token prompt
    batch = {"tokens": tokens, "mask": np.ones_like(tokens), "loss_mask": loss_mask}
    params = {"model": llama.init(jax.random.PRNGKey(1), cfg)}
    state, hist = _fit("sft", params, batch, 120, 1e-2, cfg)
    final = losses.make_loss_fn("sft", cfg)(state.params, batch, None)
    assert hist[0]["loss"] > 4.0  # ≈ log 128 at init
    assert float(final.value) < 0.1, hist[-1]


def test_bt_head_separates_8_pairs():
    cfg = tiny_config()
    batch = _pair_batch(8, 12, np.random.default_rng(3))
    params = {"model": llama.init(jax.random.PRNGKey(2), cfg), "head": heads.init(jax.random.PRNGKey(3), cfg)}
    state, hist = _fit("bt", params, batch, 40, 3e-3, cfg)
    final = losses.make_loss_fn("bt", cfg)(state.params, batch, None)
    assert float(final.metrics["accuracy"]) == 1.0, hist[-1]
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_pairrm_learns_both_orders():
    cfg = tiny_config()
    batch = _pair_batch(8, 12, np.random.default_rng(4))
    batch["labels"] = np.tile(np.asarray([[1, 0]], np.int32), (8, 1))
    params = {"model": llama.init(jax.random.PRNGKey(4), cfg), "head": heads.init(jax.random.PRNGKey(5), cfg)}
    loss_fn = losses.make_loss_fn("pairrm", cfg)
    assert abs(float(loss_fn(params, batch, None).value) - math.log(2)) < 0.05
    state, hist = _fit("pairrm", params, batch, 40, 3e-3, cfg)
    assert float(loss_fn(state.params, batch, None).metrics["accuracy"]) == 1.0, hist[-1]


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="unknown loss 'kto'"):
        losses.make_loss_fn("kto", tiny_config())


def test_reference_logprobs_from_the_pipeline_make_dpo_start_at_log2():
    from chartok import CharTokenizer

    from genrm_jax.data.pipeline import Pipeline

    cfg = tiny_config()
    records = [{"messages": [{"role": "user", "content": f"judge {i}"}], "chosen": f"A because {i}",
                "rejected": f"B since {i * 7}"} for i in range(6)]
    pipe = Pipeline(records, "dpo", CharTokenizer(), max_len=48, buckets=(48,), batch_size=4, progress=False)
    params = {"model": llama.init(jax.random.PRNGKey(0), cfg)}
    ref = losses.reference_logprobs(params["model"], cfg, pipe.sequential_batches(), progress=False)
    assert ref.shape == (6, 2) and (ref < 0).all()
    pipe.attach_reference(ref)
    batch = next(pipe.iterator())
    out = losses.make_loss_fn("dpo", cfg)(params, batch, None)
    assert abs(float(out.value) - math.log(2)) <= 1e-5


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_preference_metrics_ignore_padded_rows(kind):
    """Rows that only fill a batch (weights 0) change neither the loss nor any metric: every figure equals the one
    of the real rows alone, even when the padded rows hold extreme log-probs."""
    fn = losses.dpo if kind == "dpo" else losses.ipo
    real = [np.array([-3.0, -1.0]), np.array([-4.0, -2.5]), np.array([-5.0, -5.0]), np.array([-4.5, -1.5])]
    pad = [np.array([0.0, -90.0]), np.array([-80.0, 0.0]), np.array([-7.0, -90.0]), np.array([-60.0, -7.0])]
    alone = fn(*map(jnp.asarray, real), beta=0.5)
    padded = fn(*[jnp.asarray(np.concatenate([r, p])) for r, p in zip(real, pad)], beta=0.5,
                weights=jnp.asarray([1.0, 1.0, 0.0, 0.0]))
    assert float(padded.weight) == 2.0
    for k, v in alone.metrics.items():
        assert abs(float(padded.metrics[k]) - float(v)) < 1e-5, (k, float(padded.metrics[k]), float(v))


def test_a_registered_loss_is_one_function(monkeypatch):
    monkeypatch.setattr(losses, "LOSSES", dict(losses.LOSSES))

    @losses.register_loss("hinge", pairs=True, reference=True, beta=0.5)
    def _hinge(config, beta):
        def fn(params, batch, rng):
            lp = losses.pair_logprobs(params["model"], batch, config)
            return losses.Loss(jnp.maximum(0.0, beta - (lp[:, 0] - lp[:, 1])).mean(), jnp.float32(1), {})
        return fn

    assert losses.spec("hinge").pairs and losses.spec("hinge").beta == 0.5
    assert losses.spec("hinge").record == "dpo"  # finetune feeds it DPO-shaped records: no pipeline change
    assert callable(losses.make_loss_fn("hinge", tiny_config()))
    with pytest.raises(ValueError, match="registered twice"):
        losses.register_loss("sft", pairs=False)(_hinge)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_the_lm_head_on_scored_positions_only_gives_the_full_losses_and_gradients(kind):
    """Pipeline batches carry their scored positions (score_index): SFT and packed-pair losses run the LM head on
    those only. Loss, metrics and every gradient equal the full-logits path (SFT: the same batch without them;
    DPO: the unpacked pairs, two full sequences each) with tied and untied unembeddings, padded rows included, and
    with one scored token per row (GenRM's verdict)."""
    from chartok import CharTokenizer

    from genrm_jax.data.pipeline import Pipeline

    verdict = [{"messages": [{"role": "user", "content": f"judge {i}"}], "target": "AB"[i % 2]} for i in range(6)]
    rationale = [{"messages": [{"role": "user", "content": f"q {i}"}], "target": f"reason {'x' * i} [[A]]"}
                 for i in range(7)]
    pairs = [{"messages": [{"role": "user", "content": f"judge {i}"}], "chosen": f"A because {i}",
              "rejected": f"B since {i * 7}"} for i in range(5)]
    cases = {"sft": [(verdict, True), (rationale, False)], "dpo": [(pairs, True), (pairs, False)]}[kind]
    for records, tie in cases:
        cfg = tiny_config(tie_word_embeddings=tie)
        params = {"model": llama.init(jax.random.PRNGKey(1), cfg)}
        loss_fn = losses.make_loss_fn(kind, cfg)

        def last_batch(packed):  # 4 rows, of which 2, 3 or 1 real: the rest padding
            pipe = Pipeline(records, kind, CharTokenizer(), max_len=48, buckets=(48,), batch_size=4,
                            packed=packed, progress=False)
            if kind == "dpo":
                pipe.attach_reference(np.stack([[-20.0 - i, -25.0 + i] for i in range(len(pipe.examples))]))
            batch = list(pipe.sequential_batches())[-1]
            assert batch["n_valid"] < 4
            return pipe, {k: v for k, v in batch.items() if k != "n_valid"}

        pipe, scored = last_batch(kind == "dpo")
        assert scored["score_index"].shape[1] == pipe.scored and pipe.scored % 8 == 0
        full = (last_batch(False)[1] if kind == "dpo"
                else {k: v for k, v in scored.items() if not k.startswith("score_")})
        assert "score_index" not in full

        def value_and_grad(b):
            return jax.value_and_grad(lambda p: loss_fn(p, b, None).value)(params), loss_fn(params, b, None)

        (v_s, g_s), out_s = value_and_grad(scored)
        (v_f, g_f), out_f = value_and_grad(full)
        np.testing.assert_allclose(float(v_s), float(v_f), rtol=1e-5, atol=1e-6)
        assert float(out_s.weight) == float(out_f.weight) > 0
        for name in out_f.metrics:
            np.testing.assert_allclose(float(out_s.metrics[name]), float(out_f.metrics[name]), rtol=1e-5,
                                       atol=1e-6, err_msg=name)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_s), jax.tree_util.tree_leaves(g_f)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6,
                                       err_msg=jax.tree_util.keystr(path))
