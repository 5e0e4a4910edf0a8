"""Causal grouped-query self-attention over full sequences (prefill and training), without repeating K/V.

`kernels="xla"` (accelerators; `LlamaConfig.kernels` decides) is one batched contraction, where a fused attention
kernel belongs. `kernels="cpu"` is a layout found by measurement on XLA:CPU (4 x 512 and 32 x 320 tokens, SmolLM2
shapes):
- the batch two rows at a time (`lax.map`), so each chunk's [K, G*T, S] scores stay in cache through mask,
  softmax and the second contraction: 2.2x faster forward, 1.3x faster forward + backward;
- the queries cut into `_CAUSAL_BLOCKS` blocks that each read only the keys up to their own end (the rest are
  masked anyway): a further 1.6x on forward + backward at 512 tokens;
- a hand-written backward that recomputes the probabilities from q and k (flash-attention style) instead of
  differentiating softmax and the block slicing: forward + remat + backward 98 -> 70 ms per layer at 4 x 512.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED = -1e30  # finite so that a fully masked (padding) row gives a uniform softmax, not NaN

_CPU_ROWS = 2
_CAUSAL_BLOCKS = 4
_MIN_BLOCK = 32


def self_attention(q, k, v, mask, kernels: str = "xla"):
    """q [B, T, H, Dh]; k, v [B, T, K, Dh]; mask [B, T, T] bool (True = may attend) -> [B, T, H, Dh].

    The mask must be causal (as `llama.causal_mask` makes it): the "cpu" kernels skip the keys after a query
    block without looking at the mask.
    """
    kc, vc = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, K, T, Dh]
    if kernels != "cpu":
        return attention_kv_major(q, kc, vc, mask)
    b = q.shape[0]
    rows = _CPU_ROWS if b % _CPU_ROWS == 0 else 1
    if b <= rows:
        return _causal_cpu(q, kc, vc, mask)
    split = lambda a: a.reshape((b // rows, rows) + a.shape[1:])  # noqa: E731
    return jax.lax.map(lambda a: _causal_cpu(*a), (split(q), split(kc), split(vc), split(mask))).reshape(q.shape)


def attention_kv_major(q, kc, vc, mask):
    """`self_attention` with K/V as [B, K, S, Dh] (no causal shortcut: any mask)."""
    g = q.shape[2] // kc.shape[1]
    qm = _group_queries(q, kc.shape[1])
    probs = _probs(qm, kc, mask, g, q.shape[1])
    return _ungroup(jnp.einsum("bkms,bksd->bkmd", probs.astype(vc.dtype), vc), q.shape)


def _group_queries(q, kv):
    """[B, T, H, Dh] -> [B, K, G*T, Dh]: one query matrix per KV head."""
    b, t, h, dh = q.shape
    return jnp.transpose(q.reshape(b, t, kv, h // kv, dh), (0, 2, 3, 1, 4)).reshape(b, kv, h // kv * t, dh)


def _ungroup(x, shape):
    b, t, h, dh = shape
    kv = x.shape[1]
    return jnp.transpose(x.reshape(b, kv, h // kv, t, dh), (0, 3, 1, 2, 4)).reshape(shape)


def _probs(qm, kc, mask, g, t):
    """Softmax probabilities [B, K, G*T, S] (fp32) of grouped queries against keys kc [B, K, S, Dh]."""
    b, kv, m, dh = qm.shape
    s = kc.shape[2]
    scores = jnp.einsum("bkmd,bksd->bkms", qm, kc, preferred_element_type=jnp.float32).reshape(b, kv, g, t, s)
    scores = jnp.where(mask[:, None, None], scores * (dh ** -0.5), MASKED)
    return jax.nn.softmax(scores, axis=-1).reshape(b, kv, m, s)


def _blocks(t: int) -> tuple[int, int]:
    n = _CAUSAL_BLOCKS if t % _CAUSAL_BLOCKS == 0 and t // _CAUSAL_BLOCKS >= _MIN_BLOCK else 1
    return n, t // n


@jax.custom_vjp
def _causal_cpu(q, kc, vc, mask):
    """Causal query blocks, block i attending to keys [0, end of block i)."""
    n, size = _blocks(q.shape[1])
    outs = []
    for i in range(n):
        lo, hi = i * size, (i + 1) * size
        outs.append(attention_kv_major(q[:, lo:hi], kc[:, :, :hi], vc[:, :, :hi], mask[:, lo:hi, :hi]))
    return jnp.concatenate(outs, axis=1)


def _causal_cpu_fwd(q, kc, vc, mask):
    return _causal_cpu(q, kc, vc, mask), (q, kc, vc, mask)


def _causal_cpu_bwd(res, dout):
    q, kc, vc, mask = res
    kv, dh = kc.shape[1], q.shape[-1]
    g = q.shape[2] // kv
    n, size = _blocks(q.shape[1])
    dq, dk, dv = [], jnp.zeros(kc.shape, jnp.float32), jnp.zeros(vc.shape, jnp.float32)
    for i in range(n):
        lo, hi = i * size, (i + 1) * size
        qm, dom = _group_queries(q[:, lo:hi], kv), _group_queries(dout[:, lo:hi], kv)
        k_i, v_i = kc[:, :, :hi], vc[:, :, :hi]
        p = _probs(qm, k_i, mask[:, lo:hi, :hi], g, size)
        dp = jnp.einsum("bkmd,bksd->bkms", dom, v_i, preferred_element_type=jnp.float32)
        # softmax backward; the row sum equals rowsum(dout * out), without needing the output
        ds = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True)) * (dh ** -0.5)
        dq.append(_ungroup(jnp.einsum("bkms,bksd->bkmd", ds.astype(kc.dtype), k_i), q[:, lo:hi].shape))
        later_keys = ((0, 0), (0, 0), (0, kc.shape[2] - hi), (0, 0))
        dk = dk + jnp.pad(jnp.einsum("bkms,bkmd->bksd", ds, qm, preferred_element_type=jnp.float32), later_keys)
        dv = dv + jnp.pad(jnp.einsum("bkms,bkmd->bksd", p.astype(vc.dtype), dom,
                                     preferred_element_type=jnp.float32), later_keys)
    return jnp.concatenate(dq, axis=1).astype(q.dtype), dk.astype(kc.dtype), dv.astype(vc.dtype), None


_causal_cpu.defvjp(_causal_cpu_fwd, _causal_cpu_bwd)
