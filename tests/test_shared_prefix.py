"""Packed preference pairs: one row [prompt | chosen | rejected] per DPO/IPO pair (data.pipeline, packed=True), the
prompt computed once. The shared-prefix mask by hand; packed log-probs, DPO loss and gradients equal the unpacked
[B, 2, L] pairs' under every kernel path; the rejected side never reads the chosen tokens; the packed pipeline
keeps, truncates and skips exactly the records the unpacked one does."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from chartok import CharTokenizer
from conftest import tiny_config

from genrm_jax import finetune, losses, train
from genrm_jax.data import pipeline
from genrm_jax.data.pipeline import Pipeline, collate, encode_records
from genrm_jax.models import attention, llama

TOK = CharTokenizer()


def _pair(q, chosen, rejected):
    return {"messages": [{"role": "user", "content": q}], "chosen": chosen, "rejected": rejected}


def _records():
    """Prompts of different lengths; completions of different lengths, on either side the longer."""
    return [_pair("which is better?" * (1 + i % 3), "good " * (1 + i % 2) + str(i), "bad answer " * (1 + i % 3))
            for i in range(5)]


def test_shared_prefix_mask_by_hand():
    seg = jnp.asarray([[1, 1, 2, 2, 3, 3, 0]])  # prompt, chosen, rejected, padding
    want = np.asarray([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],  # the rejected tokens read the prompt and themselves, not the chosen ones
        [1, 1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0],  # padding reads nothing and is read by nothing
    ], bool)
    np.testing.assert_array_equal(attention.Mask(seg, shared_prefix=True).dense()[0], want)
    plain = np.tril(np.ones((7, 7), bool)) & (np.asarray(seg[0])[:, None] == np.asarray(seg[0])[None, :])
    plain[:, 6] = False
    np.testing.assert_array_equal(attention.Mask(seg).dense()[0], plain)  # without the flag: within segments


def test_cudnn_call_with_a_shared_prefix_equals_reference():
    """The cuDNN path's argument building (implementation="xla" off GPU) against the reference dense mask."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 12, h, 16)), jnp.float32) for h in (4, 2, 2))
    seg = jnp.asarray([[1] * 5 + [2] * 3 + [3] * 4, [1] * 3 + [2] * 2 + [3] * 4 + [0] * 3])
    mask = attention.Mask(seg, shared_prefix=True)
    real = (seg > 0)[:, :, None, None]
    got = attention.dot_product(q, k, v, mask, implementation="xla")
    want = attention.self_attention(q, k, v, mask.dense(), "xla")
    np.testing.assert_allclose(jnp.where(real, got, 0), jnp.where(real, want, 0), atol=1e-5)


def _batches(length_pairs, length_packed, batch_size=4):
    """The same 3 examples (and a filler row) as [B, 2, L] pairs and packed rows."""
    examples, _ = encode_records(_records()[:3], "dpo", TOK, 64, progress=False)
    pairs = collate(examples, length_pairs, 0, batch_size)
    packed = collate(examples, length_packed, 0, batch_size, packed=True)
    return pairs, packed


@pytest.mark.parametrize("kernels", ["xla", "cpu"])
def test_packed_pairs_equal_unpacked_in_logprobs_loss_and_gradients(kernels):
    cfg = tiny_config(kernels=kernels)
    params = {"model": llama.init(jax.random.PRNGKey(0), cfg)}
    pairs, packed = _batches(64, 128)  # 128: the "cpu" kernels cut it into 4 causal query blocks
    assert packed["tokens"].shape == (4, 128) and packed["loss_mask"].shape == (4, 2, 128)
    lp = jax.jit(lambda p, b: losses.pair_logprobs(p, b, cfg))
    want, got = lp(params["model"], pairs), lp(params["model"], packed)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-6)  # sums of ~100: an ulp is ~1e-5
    assert (np.asarray(want)[:3] < 0).all() and (np.asarray(got)[3] == 0).all()  # the filler row counts nothing
    # a reference near the policy, so that the loss is not saturated and its gradients are not vanishing
    pairs["ref_logps"] = packed["ref_logps"] = np.asarray(want) + np.asarray([[0.7, -0.4], [-0.3, 0.9], [0.2, 0.1],
                                                                              [5.0, 5.0]], np.float32)
    fn = losses.make_loss_fn("dpo", cfg)
    step = jax.jit(jax.value_and_grad(lambda p, b: fn(p, b, None).value))
    (l_want, g_want), (l_got, g_got) = step(params, pairs), step(params, packed)
    np.testing.assert_allclose(l_got, l_want, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
        scale = float(jnp.max(jnp.abs(b)))
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * scale + 1e-8, (float(jnp.max(jnp.abs(a - b))), scale)


@pytest.mark.parametrize("kernels", ["xla", "cpu", "cudnn", "splash"])
def test_rejected_side_never_reads_the_chosen_tokens(kernels):
    """Other chosen tokens (same lengths) change the chosen log-probs and leave the rejected ones as they were:
    this fails if the rejected tokens may attend to the chosen ones, under every kernel path ("cudnn" runs its
    call with XLA off GPU in bf16; "splash" falls back to the reference for a shared-prefix mask)."""
    dtype = "bfloat16" if kernels == "cudnn" else "float32"
    cfg = tiny_config(kernels=kernels, compute_dtype=dtype)
    params = llama.init(jax.random.PRNGKey(1), cfg)
    _, packed = _batches(64, 128)
    other = dict(packed, tokens=np.where(packed["segment_ids"] == 2, (packed["tokens"] * 7 + 3) % 90 + 3,
                                         packed["tokens"]))
    assert (other["tokens"] != packed["tokens"]).any()
    lp = jax.jit(lambda b: losses.pair_logprobs(params, b, cfg))
    a, b = np.asarray(lp(packed)), np.asarray(lp(other))
    np.testing.assert_allclose(b[:, 1], a[:, 1], atol=1e-6, rtol=0)
    assert np.abs(b[:3, 0] - a[:3, 0]).min() > 1e-3  # (row 3 fills the batch: no log-probs)
    if kernels == "splash":
        ref = losses.pair_logprobs(params, packed, cfg.replace(kernels="xla"))
        np.testing.assert_allclose(a, ref, atol=1e-5)


def test_packed_rows_hold_prompt_chosen_rejected():
    ex = encode_records([_pair("which?", "short", "a much longer answer")], "dpo", TOK, 30, progress=False)[0][0]
    b = collate([ex], 64, 0, packed=True)
    c, r = ex["tokens"]
    p = ex["prefix_len"]
    n = pipeline.packed_length(ex)
    assert n == len(c) + len(r) - p
    np.testing.assert_array_equal(b["tokens"][0, :n], np.concatenate([c, r[p:]]))
    assert b["mask"][0].sum() == n and (b["tokens"][0, n:] == 0).all()
    np.testing.assert_array_equal(b["positions"][0, :n], np.r_[np.arange(len(c)), np.arange(p, len(r))])
    assert b["src"][0, len(c)] == p - 1 and b["src"][0, len(c) + 1] == len(c)  # the first rejected token: P-1
    assert TOK.decode(b["tokens"][0][b["loss_mask"][0, 0] == 1]) == "short"
    assert TOK.decode(b["tokens"][0][b["loss_mask"][0, 1] == 1]) == "a much longer answer"


def test_packed_pipeline_keeps_the_same_records_and_attaches_the_reference():
    max_len = 48
    records = _records() + [_pair("q" * 200, "fits", "truncated prompt"),  # the prompt is cut from the left
                            _pair("q", "x" * 60, "too long"),  # an answer over max_len: skipped
                            _pair("q", "same", "same"), _pair("q", " ", "empty")]
    kw = dict(max_len=max_len, batch_size=3, drop_remainder=False, progress=False)
    plain, packed = Pipeline(records, "dpo", TOK, **kw), Pipeline(records, "dpo", TOK, packed=True, **kw)
    assert packed.stats.as_dict() == plain.stats.as_dict()
    assert packed.stats.truncated == 4  # the long prompt and 3 of _records()
    assert packed.stats.skipped == {"too_long": 1, "identical_answers": 1, "empty_chosen": 1}
    assert packed.buckets == (12, 24, 48, 72, 96)
    for a, b in zip(plain.examples, packed.examples):
        for x, y in zip(a["tokens"], b["tokens"]):
            np.testing.assert_array_equal(x, y)
    lengths = [pipeline.packed_length(ex) for ex in packed.examples]
    assert max(lengths) > max_len  # packed rows do reach the added buckets
    with pytest.raises(ValueError, match="packed batches are for"):
        Pipeline(records, "bt", TOK, packed=True, **kw)

    cfg = tiny_config()
    params = llama.init(jax.random.PRNGKey(0), cfg)
    ref = losses.reference_logprobs(params, cfg, packed.sequential_batches(), progress=False)
    np.testing.assert_allclose(ref, losses.reference_logprobs(params, cfg, plain.sequential_batches(),
                                                              progress=False), atol=1e-5)
    packed.attach_reference(ref)
    batches = list(packed.iterator())
    assert sum(int(b["valid"].sum()) for b in batches) == len(packed.examples)
    for b in batches:
        assert b["tokens"].ndim == 2 and b["ref_logps"].shape == (3, 2) and b["tokens"].shape[1] in packed.buckets
        assert (b["loss_mask"].sum(axis=1) <= b["mask"]).all()
        real = b["valid"] > 0
        assert train._batch_tokens(b) == int(b["mask"][real].sum())  # the tokens computed: the prompt once
    out = losses.make_loss_fn("dpo", cfg)({"model": params}, batches[0], None)
    assert abs(float(out.value) - np.log(2)) <= 1e-5  # the policy is the reference


def test_packed_pipeline_splits_rows_over_processes():
    records = [_pair(f"q{i}", f"good {i}", f"bad answer {i}") for i in range(6)]
    kw = dict(max_len=48, batch_size=4, drop_remainder=False, progress=False, packed=True)
    whole = list(Pipeline(records, "dpo", TOK, **kw).iterator())
    parts = [list(Pipeline(records, "dpo", TOK, rows=rows, **kw).iterator()) for rows in ((0, 2), (2, 4))]
    for step, batch in enumerate(whole):
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), batch[key], err_msg=key)


def test_fit_packs_preference_pairs_on_the_cpu_kernels_only():
    cpu, xla = tiny_config(kernels="cpu"), tiny_config(kernels="xla")
    assert finetune._packs("dpo", cpu) and finetune._packs("ipo", cpu)
    assert not finetune._packs("dpo", xla) and not finetune._packs("bt", cpu) and not finetune._packs("sft", cpu)
