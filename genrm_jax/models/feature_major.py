"""The CPU sampler's layout for `llama.layer`: activations feature-major, [features, tokens], weights [out, in].

Why a second layout: XLA:CPU's matmul splits its work along the rows of the product. A decode step has few
tokens (1 to 32 rows) and wide weights, so with tokens as rows a [32, 576] x [576, 1536] product ran at one
core's speed; computed as [1536, 576] x [576, 32] it ran 1.5x faster on this 2-core machine (30 SmolLM2
MLPs at 32 tokens: 54 -> 35 ms; 8 tokens: 26 -> 17 ms; the unembedding at 32 tokens: 18 -> 12 ms).
Prefill-sized products are as fast or faster this way (1,280 tokens: equal; 9,600 tokens: 139 vs 122 ms), so
the sampler keeps one copy of the weights, in this layout (`prepare`), for both. It is part of the "cpu" kernels
(`LlamaConfig.kernels`); with "xla" the sampler runs `llama.RowMajor` on the weights as stored.

Only the data movement lives here; the maths is `llama.layer`'s. Attention, RoPE and the KV cache keep the
row-major layout: only [tokens, heads x head_dim] activations are transposed, which costs little next to the
weight matmuls.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from genrm_jax.models import attention, llama


def prepare(params: llama.Params, config: llama.LlamaConfig) -> llama.Params:
    """`llama` params (layers stacked or not) -> a per-layer list of [out, in] matrices (the layers unrolled:
    each then updates its own KV cache arrays in place, see sampling.py).

    The tied embedding [V, D] already is the unembedding's [out, in] matrix, so it is not copied.
    """
    d = config.hidden_size

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
    if not config.tie_word_embeddings:
        out["lm_head"] = params["lm_head"].T  # [V, D]
    return out


class FeatureMajor:
    """x [D, B * S] for a batch of `shape` = (B, S) sequences; weights from `prepare`. See `llama.RowMajor` for
    what a layout provides."""

    def __init__(self, config: llama.LlamaConfig, shape: tuple[int, int]):
        self.config = config
        self.shape = shape

    def embed(self, params, tokens):
        """tokens [B, S] -> x [D, B * S]."""
        return params["embed"].astype(self.config.compute_dtype)[tokens.reshape(-1)].T

    def norm(self, x, weight):
        return llama.rms_norm(x, weight, self.config.rms_norm_eps, axis=0)

    def heads(self, x, w):
        """w [N * Dh, D] x x [D, B * S] -> [B, S, N, Dh]."""
        b, s = self.shape
        y = _mm(w, x)
        return jnp.transpose(y.reshape(-1, self.config.head_dim, b, s), (2, 3, 0, 1))

    def merge_heads(self, a, w):
        """a [B, S, H, Dh], wo [D, H * Dh] -> [D, B * S]."""
        b, s, h, dh = a.shape
        return _mm(w, jnp.transpose(a, (2, 3, 0, 1)).reshape(h * dh, b * s))

    def dense(self, x, w):
        return _mm(w, x)

    def attend(self, q, k, v, mask: attention.Mask):
        return attention.self_attention(q, k, v, mask.dense(), "cpu")

    def last(self, x):
        """Each sequence's last position: [D, B * S] -> [D, B]."""
        b, s = self.shape
        return x.reshape(-1, b, s)[:, :, -1]

    def logits(self, params, h):
        """Normed hidden states h [D, T] -> float32 logits [T, V]."""
        w = params["embed"] if self.config.tie_word_embeddings else params["lm_head"]
        out = jnp.dot(w.astype(h.dtype), h, preferred_element_type=jnp.float32)  # [V, T]
        # Without the barrier XLA folds the transpose into the product, which brings back the slow orientation.
        return jax.lax.optimization_barrier(out).T


def _mm(w, x):
    return jnp.dot(w.astype(x.dtype), x)
