"""The fused attention kernels ("cudnn": `jax.nn.dot_product_attention`; "splash": the Pallas TPU kernel)
against the reference attention ("xla"), on CPU: the cuDNN call's argument building runs with JAX's XLA
implementation, splash in Pallas interpret mode. Causal, left padding, packed segments, GQA; values at every
real position and gradients of a loss over real positions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from genrm_jax.models import attention, llama


def _inputs(batch, length, heads=4, kv_heads=2, dh=16, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((batch, length, h, dh)), dtype) for h in (heads, kv_heads, kv_heads))
    return q, k, v


def _segments(batch, length):
    """Row 0 left-padded, row 1 two packed sequences, the rest plain."""
    seg = np.ones((batch, length), np.int32)
    seg[0, :length // 4 + 1] = 0
    seg[1, length // 3:] = 2
    seg[1, -3:] = 0  # and right padding after the packed pair
    return jnp.asarray(seg)


def _check(fused, q, k, v, seg, *, atol, grad_atol):
    real = (seg > 0)[:, :, None, None]

    def ref(q, k, v):
        return jnp.where(real, attention.self_attention(q, k, v, llama.causal_mask(seg), "xla"), 0)

    def out(q, k, v):
        return jnp.where(real, fused(q, k, v), 0)

    np.testing.assert_allclose(out(q, k, v), ref(q, k, v), atol=atol)
    w = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), q.dtype)  # a loss that weighs every output
    g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
    g_out = jax.grad(lambda *a: jnp.sum(out(*a) * w), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", g_out, g_ref):
        assert np.isfinite(np.asarray(a)).all(), name
        np.testing.assert_allclose(a, b, atol=grad_atol, err_msg=f"d{name}")


@pytest.mark.parametrize("padded", [True, False])
def test_dot_product_attention_equals_reference(padded):
    """The cuDNN path's call (is_causal + a same-segment mask, GQA K/V as they are) with implementation="xla"."""
    q, k, v = _inputs(3, 24)
    seg = _segments(3, 24) if padded else jnp.ones((3, 24), jnp.int32)
    mask = attention.Mask(seg, padded)
    _check(lambda q, k, v: attention.dot_product(q, k, v, mask, implementation="xla"), q, k, v, seg,
           atol=1e-5, grad_atol=1e-4)


def test_splash_attention_equals_reference():
    """The TPU kernel in Pallas interpret mode (its smallest length: 128, the TPU's lane width)."""
    q, k, v = _inputs(2, 128, dh=16)
    seg = _segments(2, 128)
    _check(lambda q, k, v: attention.splash_attention(q, k, v, attention.Mask(seg), interpret=True), q, k, v, seg,
           atol=1e-5, grad_atol=1e-4)


def test_fused_kernels_take_only_their_shapes():
    q32 = jnp.zeros((1, 24, 4, 16), jnp.float32)
    assert not attention.cudnn_takes(q32)  # cuDNN: 16-bit floats only
    assert attention.cudnn_takes(q32.astype(jnp.bfloat16))
    assert not attention.cudnn_takes(jnp.zeros((1, 23, 4, 16), jnp.bfloat16))  # odd length
    assert not attention.splash_takes(q32) and attention.splash_takes(jnp.zeros((1, 256, 4, 16)))


def test_model_with_cudnn_kernels_equals_xla_in_loss_and_gradients():
    """The whole model (bf16 compute, so the cuDNN path is taken; scanned layers, remat "dense"), left padding
    and packing: the same loss and gradients as the reference kernels, within bf16 rounding."""
    cfg = tiny_config(compute_dtype="bfloat16", remat=True, remat_policy="dense")
    params = llama.init(jax.random.PRNGKey(3), cfg)
    tokens = jnp.arange(64).reshape(2, 32) * 7 % cfg.vocab_size
    seg = jnp.asarray([[0] * 5 + [1] * 27, [1] * 20 + [2] * 12])

    def loss(p, kernels):
        logits = llama.forward(p, tokens, cfg.replace(kernels=kernels), segment_ids=seg).logits
        return jnp.sum(jax.nn.logsumexp(logits, axis=-1) * (seg > 0)) / jnp.sum(seg > 0)

    (l_ref, g_ref), (l_fused, g_fused) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, k)
                                          for k in ("xla", "cudnn"))
    np.testing.assert_allclose(l_fused, l_ref, rtol=2e-3)
    for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_ref)):
        scale = float(jnp.max(jnp.abs(b))) + 1e-6
        assert float(jnp.max(jnp.abs(a - b))) <= 0.05 * scale


def test_unpadded_forward_gives_the_fused_kernel_no_mask(monkeypatch):
    """Without attention_mask or segment_ids the fused call is plain causal (no [B, 1, T, T] bias for cuDNN)."""
    seen = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: seen.append(kw["mask"]) or real(*a, **kw))
    cfg = tiny_config(compute_dtype="bfloat16", kernels="cudnn")
    params = llama.init(jax.random.PRNGKey(0), cfg)
    tokens = jnp.arange(16)[None]
    plain = llama.forward(params, tokens, cfg).logits
    padded = llama.forward(params, tokens, cfg, attention_mask=jnp.ones_like(tokens)).logits
    assert seen[0] is None and seen[-1] is not None
    np.testing.assert_allclose(plain, padded, atol=1e-6)
