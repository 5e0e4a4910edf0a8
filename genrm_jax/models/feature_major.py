"""Llama for inference with activations feature-major, [features, tokens], and weight matrices [out, in].

Why a second layout: XLA:CPU's matmul splits its work along the rows of the product. A decode step has few
tokens (1 to 32 rows) and wide weights, so with tokens as rows a [32, 576] x [576, 1536] product ran at one
core's speed; computed as [1536, 576] x [576, 32] it ran 1.5x faster on this 2-core machine (30 SmolLM2
MLPs at 32 tokens: 54 -> 35 ms; 8 tokens: 26 -> 17 ms; the unembedding at 32 tokens: 18 -> 12 ms).
Prefill-sized products are as fast or faster this way (1,280 tokens: equal; 9,600 tokens: 139 vs 122 ms), so
the sampler keeps one copy of the weights, in this layout, for both.

Attention, RoPE and the KV cache keep `llama`'s row-major layout: only [tokens, heads x head_dim] activations
are transposed, which costs little next to the weight matmuls.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from genrm_jax.models import llama
from genrm_jax.models.attention import self_attention


def prepare(params: llama.Params, config: llama.LlamaConfig) -> llama.Params:
    """`llama` params (layers stacked or not) -> a per-layer list of [out, in] matrices.

    The tied embedding [V, D] already is the unembedding's [out, in] matrix, so it is not copied.
    """
    c = config
    d = c.hidden_size

    def layer(lp):
        return {
            "attn_norm": lp["attn_norm"],
            "wq": lp["wq"].reshape(d, -1).T,  # [H * Dh, D]
            "wk": lp["wk"].reshape(d, -1).T,
            "wv": lp["wv"].reshape(d, -1).T,
            "wo": lp["wo"].reshape(-1, d).T,  # [D, H * Dh]
            "mlp_norm": lp["mlp_norm"],
            "w_gate": lp["w_gate"].T,  # [F, D]
            "w_up": lp["w_up"].T,
            "w_down": lp["w_down"].T,  # [D, F]
        }

    out = {"embed": params["embed"], "final_norm": params["final_norm"],
           "layers": [layer(lp) for lp in llama.unstack_layers(params)["layers"]]}
    if not c.tie_word_embeddings:
        out["lm_head"] = params["lm_head"].T  # [V, D]
    return out


def rms_norm(x, weight, eps):
    """`llama.rms_norm` over the feature axis 0 of x [D, T]."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=0, keepdims=True) + eps)
    return weight.astype(x.dtype)[:, None] * xf.astype(x.dtype)


def _mm(w, x):
    return jnp.dot(w.astype(x.dtype), x)


def _rows(y, shape, heads):
    """[heads * Dh, B * S] -> [B, S, heads, Dh]."""
    b, s = shape
    return jnp.transpose(y.reshape(heads, -1, b, s), (2, 3, 0, 1))


def _features(a):
    """[B, S, H, Dh] -> [H * Dh, B * S]."""
    b, s, h, dh = a.shape
    return jnp.transpose(a, (2, 3, 0, 1)).reshape(h * dh, b * s)


def embed(params, tokens, config):
    """tokens [B, S] -> x [D, B * S]."""
    return params["embed"].astype(config.compute_dtype)[tokens.reshape(-1)].T


def layer(lp, x, rope, mask, config, shape, kv_update=None, attend=self_attention):
    """`llama.layer` on x [D, B * S] with `shape` = (B, S); the hooks see `llama`'s row-major tensors."""
    c = config
    h = rms_norm(x, lp["attn_norm"], c.rms_norm_eps)
    q = llama.apply_rope(_rows(_mm(lp["wq"], h), shape, c.num_heads), rope)
    k = llama.apply_rope(_rows(_mm(lp["wk"], h), shape, c.num_kv_heads), rope)
    v = _rows(_mm(lp["wv"], h), shape, c.num_kv_heads)
    if kv_update is not None:
        k, v = kv_update(k, v)
    x = x + _mm(lp["wo"], _features(attend(q, k, v, mask)))
    h = rms_norm(x, lp["mlp_norm"], c.rms_norm_eps)
    return x + _mm(lp["w_down"], jax.nn.silu(_mm(lp["w_gate"], h)) * _mm(lp["w_up"], h))


def logits(params, h, config):
    """Normed hidden states h [D, T] -> float32 logits [T, V]."""
    w = params["embed"] if config.tie_word_embeddings else params["lm_head"]
    out = jnp.dot(w.astype(h.dtype), h, preferred_element_type=jnp.float32)  # [V, T]
    # Without the barrier XLA folds the transpose into the product, which brings back the slow orientation.
    return jax.lax.optimization_barrier(out).T
