"""Scoring a continuation of rows the sampler has just run, from their KV cache: no second prefill.

A forced verdict appends a few tokens (e.g. the rationale's end and `\\n\\n[[`) after a sampled row and reads the
next-token distribution after them. The row's prompt and generated tokens are already in the sampler's cache
(`kernels.State`: the shared prompt cache and the row's own generated-token cache), so only the appended tokens
run through the layers: one chunk of S tokens per row, attending to the row's prompt, to its first `reuse`
generated tokens and, causally, to the chunk itself. Nothing is written to the cache.

Rows differ in how many generated tokens they keep and how many they append: the chunks are right-aligned (the
last token of every row in the chunk's last column, filler columns before it masked out as keys), each token at
its own RoPE position `prompt_len + reuse + i`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from genrm_jax.models import attention, llama
from genrm_jax.sampling import kernels as sampler_kernels


def attend_continuation(q, k, v, masks):
    """Attention of a chunk of S tokens per row over its prompt's shared cache, its own generated tokens and the
    chunk itself; one softmax over the three parts.

    q [R, S, H, Dh] with R = U prompts x M samples; k and v are (prompt cache [U, K, P, Dh], generated-token cache
    [R, K, N, Dh], chunk [R, S, K, Dh]); masks are (prompt [U, P], generated [R, N], chunk [R, S, S]) bool.
    """
    (kp, kn, kc), (vp, vn, vc) = k, v
    prompt_mask, new_mask, chunk_mask = masks
    r, s, h, dh = q.shape
    u, kv, p, _ = kp.shape
    m, g = r // u, h // kv
    scale = dh ** -0.5
    f32 = jnp.float32
    qg = q.reshape(r, s, kv, g, dh)
    sp = jnp.einsum("umskgd,ukpd->umskgp", qg.reshape(u, m, s, kv, g, dh), kp.astype(q.dtype),
                    preferred_element_type=f32).reshape(r, s, kv, g, p)
    sp = jnp.where(jnp.repeat(prompt_mask, m, axis=0)[:, None, None, None, :], sp * scale, attention.MASKED)
    sn = jnp.einsum("rskgd,rknd->rskgn", qg, kn.astype(q.dtype), preferred_element_type=f32)
    sn = jnp.where(new_mask[:, None, None, None, :], sn * scale, attention.MASKED)
    sc = jnp.einsum("rskgd,rtkd->rskgt", qg, kc.astype(q.dtype), preferred_element_type=f32)
    sc = jnp.where(chunk_mask[:, :, None, None, :], sc * scale, attention.MASKED)
    probs = jax.nn.softmax(jnp.concatenate([sp, sn, sc], axis=-1), axis=-1).astype(q.dtype)
    wp, wn, wc = jnp.split(probs, [p, p + kn.shape[2]], axis=-1)
    out = jnp.einsum("umskgp,ukpd->umskgd", wp.reshape(u, m, s, kv, g, p), vp.astype(q.dtype)).reshape(qg.shape)
    out = out + jnp.einsum("rskgn,rknd->rskgd", wn, vn.astype(q.dtype))
    out = out + jnp.einsum("rskgt,rtkd->rskgd", wc, vc.astype(q.dtype))
    return out.reshape(r, s, h, dh)


def score(params, prompt_kv, new_kv, prompt_lens, tokens, lens, reuse, candidates, *, config, kernels, residual,
          counter):
    """Log-probabilities [R, len(candidates)] (over the full vocabulary) of each candidate as the next token after
    row r's prompt, its first `reuse[r]` generated tokens and its `lens[r]` appended tokens.

    prompt_kv, new_kv, prompt_lens: a finished `kernels.State`'s (the row's generated token i has its K/V in
    generated-cache slot i); tokens [R, S] int32, row r's appended tokens in its last `lens[r]` columns (lens >= 1).
    """
    counter["continue"] += 1  # runs at trace time only: counts compilations
    p = jax.tree.leaves(prompt_kv)[0].shape[-2]
    n = jax.tree.leaves(new_kv)[0].shape[-2]
    rows, s = tokens.shape
    samples = rows // prompt_lens.shape[0]
    col = jnp.arange(s)[None, :]
    first = s - lens[:, None]  # the chunk column of the row's first real token
    real = col >= first
    positions = jnp.where(real, jnp.repeat(prompt_lens, samples)[:, None] + reuse[:, None] + col - first, 0)
    rope = llama.rope(positions, config, max_position=p + n + s)
    masks = (jnp.arange(p)[None, :] >= p - prompt_lens[:, None],
             jnp.arange(n)[None, :] < reuse[:, None],
             jnp.tril(jnp.ones((s, s), bool))[None] & real[:, None, :])
    ops = sampler_kernels.layout(config, kernels, (rows, s))

    def body(x, lp, prompt_kv, new_kv):
        (kp, vp), (kn, vn) = prompt_kv, new_kv

        def splice(k, v):  # the chunk's own K/V join the cached ones; the cache is only read
            return (kp, kn, k), (vp, vn, v)

        x = llama.layer(lp, x, rope, masks, config, layout=ops, kv_update=splice, attend=attend_continuation)
        return sampler_kernels._constrain(x, residual), None

    x = sampler_kernels._constrain(ops.embed(params, tokens), residual)
    x, _ = llama.run_layers(body, x, params["layers"], prompt_kv, new_kv)
    return jax.nn.log_softmax(sampler_kernels._next_logits(params, ops, x), axis=-1)[:, candidates]
