"""The sampler's compiled kernels: prefill, decode (a `lax.while_loop` over tokens) and next-token scoring.

Every kernel runs `llama.layer` (the one definition of the layer maths) in a layout chosen by the resolved
`LlamaConfig.kernels`:
- "cpu": activations feature-major over a transposed copy of the weights (`models/feature_major.py`), the layers
  unrolled over per-layer params, each with its own cache arrays that `dynamic_update_slice` updates in place
  inside the while_loop (a stacked cache under `scan` is copied every step on XLA:CPU). With 1 to 32 tokens per
  step XLA:CPU's matmuls run 1.5x faster that way round (decode step of 4 prompts x 8 samples: 125 -> 98 ms).
- "xla": `llama.RowMajor` over the weights as stored, stacked layers under `lax.scan` (one compiled layer: short
  compiles on a pod), the cache stacked likewise [layers, ...]. Under a mesh the weights stay sharded as they
  are and the residual stream is constrained to be split by batch.

The KV cache is split in two: the prompt's K/V, written once by the prefill and stored once per *distinct
prompt* [prompts, kv_heads, prompt_slots, head_dim], and the generated tokens' K/V per row
[rows, kv_heads, new_slots, head_dim]. The n samples of a prompt share its prefill and its prompt cache: decode
attends to the prompt with all n x (heads per KV head) queries of that prompt as one matrix (a real matmul
instead of n thin ones, and the prompt's cache is read once, not n times), then joins the softmax with the
row's own generated keys. Prompts are left-padded to a shape bucket: every row writes the same cache slot at
each step (one scalar index). Tokens that every prompt of a call starts with (a judge's instructions) run once,
through `prefix_pass`; `prefill` and `score` then run only each prompt's own tokens, attending to that prefix's
K/V, and the cache they leave is laid out as if each whole prompt had been prefilled.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from genrm_jax.models import attention, feature_major, llama
from genrm_jax.sampling.tokens import Mode, sample_tokens


class Values(NamedTuple):
    """Traced sampling values: changing them does not recompile."""
    temperature: jax.Array  # f32 scalar (unused when greedy)
    top_k: jax.Array  # i32 scalar
    top_p: jax.Array  # f32 scalar
    stop_at_eos: jax.Array  # bool scalar


class State(NamedTuple):
    # K/V per layer in the layers' layout: a tuple of per-layer (k, v) when the layers are a list, one stacked
    # (k, v) pair [layers, ...] when they are stacked (`llama.run_layers` reads and writes either).
    prompt_kv: tuple  # each [prompts, kv_heads, prompt_slots, head_dim]; read-only in decode
    new_kv: tuple  # each [rows, kv_heads, new_slots, head_dim]; rows = prompts x samples
    tokens: jax.Array  # [rows, new_bucket] int32, generated tokens (pad after a row ends)
    logprobs: jax.Array  # [rows, new_bucket] f32
    done: jax.Array  # [rows] bool
    length: jax.Array  # [rows] int32, tokens generated (EOS included)
    step: jax.Array  # i32 scalar, tokens generated so far by the batch
    prompt_lens: jax.Array  # [prompts] int32
    keys: jax.Array  # [rows] typed PRNG keys


CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")  # logical axes of one layer's cache (sharding.py)


def layout(config, kernels: str, shape: tuple[int, int]):
    """The activation layout of the resolved `kernels` for a batch of `shape` = (sequences, tokens each)."""
    return feature_major.FeatureMajor(config, shape) if kernels == "cpu" else llama.RowMajor(config)


def _constrain(x, sharding):
    # Under a mesh: keep the residual stream split by batch between layers, rather than leaving XLA to guess
    # from the weights' (embed-sharded) layout.
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _uniforms(keys, step):
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step), (), jnp.float32))(keys)


def _record(state: State, logits, values: Values, mode: Mode, eos_ids, pad_id) -> State:
    """Samples token `state.step` of every live row and writes it into the output buffers."""
    tok, logprob = sample_tokens(logits, _uniforms(state.keys, state.step), mode,
                                 values.temperature, values.top_k, values.top_p)
    live = ~state.done
    t = state.step
    tokens = jax.lax.dynamic_update_index_in_dim(state.tokens, jnp.where(live, tok, pad_id), t, axis=1)
    logprobs = jax.lax.dynamic_update_index_in_dim(state.logprobs, jnp.where(live, logprob, 0.0), t, axis=1)
    is_eos = jnp.isin(tok, jnp.asarray(eos_ids, jnp.int32)) & values.stop_at_eos
    return state._replace(tokens=tokens, logprobs=logprobs, done=state.done | is_eos,
                          length=jnp.where(live, t + 1, state.length), step=t + 1)


def _next_logits(params, ops, x):
    """The last position of each sequence -> its next-token logits [sequences, V] (fp32)."""
    return ops.logits(params, ops.norm(ops.last(x), params["final_norm"]))


def _prompt_pass(params, prompts, prompt_lens, *, config, kernels, residual, kv_dtype=None, prefix_kv=None):
    """Left-padded prompts [U, P] through every layer -> (the last token's logits [U, V], each layer's (k, v)
    [U, P0 + P, K, Dh] in `kv_dtype` and the layers' layout: the shared prefix's P0 positions, then the prompts'
    own; None without `kv_dtype`).

    `prefix_kv` (from a pass over the shared prefix [1, P0]): every prompt continues that prefix, its tokens at
    positions P0, P0 + 1, ... and attending to all of the prefix, then causally to itself."""
    u, p = prompts.shape
    p0 = 0 if prefix_kv is None else jax.tree.leaves(prefix_kv)[0].shape[-3]
    segment = (jnp.arange(p)[None, :] >= p - prompt_lens[:, None]).astype(jnp.int32)
    rope = llama.rope(llama.segment_positions(segment) + p0, config, max_position=p0 + p)
    mask = attention.Mask(segment)
    if p0:  # the prefix's keys are real for every query: [U, P, P0 + P]
        mask = jnp.concatenate([jnp.ones((u, p, p0), bool), attention.causal_mask(segment)], axis=-1)
    ops = layout(config, kernels, (u, p))

    def body(x, lp, *prefix):
        kv = []

        def keep(k, v):
            if prefix:  # the prefix's K/V (one copy) ahead of every prompt's own
                k, v = (jnp.concatenate([jnp.broadcast_to(a, (u,) + a.shape[1:]).astype(b.dtype), b], axis=1)
                        for a, b in zip(prefix[0], (k, v)))
            if kv_dtype is not None:
                kv.append((k.astype(kv_dtype), v.astype(kv_dtype)))
            return k, v

        attend = None
        if prefix:
            def attend(q, k, v, mask):
                return attention.attention_kv_major(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)

        x = llama.layer(lp, x, rope, mask, config, layout=ops, kv_update=keep, attend=attend)
        return _constrain(x, residual), (kv[0] if kv else None)

    per_layer = () if prefix_kv is None else (prefix_kv,)
    x, kv = llama.run_layers(body, _constrain(ops.embed(params, prompts), residual), params["layers"], *per_layer)
    return _next_logits(params, ops, x), kv


def prefix_pass(params, prefix, *, config, kernels, counter):
    """The K/V of `prefix` [1, P0], tokens that every prompt of a call starts with: each layer's (k, v)
    [1, P0, K, Dh] in the compute dtype, computed once per call and read by `prefill` and `score` for every batch
    (the engine shares no prefix under a mesh: one row is not split by batch)."""
    counter["prefix"] += 1
    _, kv = _prompt_pass(params, prefix, jnp.full((1,), prefix.shape[1], jnp.int32), config=config, kernels=kernels,
                         residual=None, kv_dtype=config.compute_dtype)
    return kv


def _prompts_with_prefix(params, prefix_kv, prompts, prompt_lens, *, config, kernels, residual, kv_dtype=None):
    """(logits [U, V], each layer's (k, v) [U, P0 + P, K, Dh] or None without `kv_dtype`, prompt lengths [U]
    prefix included) of the prompts prefix + prompts[u], `prefix_kv` being the prefix's (`prefix_pass`; None: no
    prefix). The K/V come back left-padded, as if each whole prompt had been prefilled on its own: what decode
    and the continuation read."""
    statics = dict(config=config, kernels=kernels, residual=residual, kv_dtype=kv_dtype)
    if prefix_kv is None:
        logits, kv = _prompt_pass(params, prompts, prompt_lens, **statics)
        return logits, kv, prompt_lens
    p0 = jax.tree.leaves(prefix_kv)[0].shape[-3]
    logits, kv = _prompt_pass(params, prompts, prompt_lens, prefix_kv=prefix_kv, **statics)
    if kv is None:
        return logits, kv, prompt_lens + p0
    # Slot j of prompt u holds [prefix | padding | own tokens]; left-padded it is [padding | prefix | own tokens]:
    # the prefix moves right by the padding's width p - len[u], the own tokens stay.
    p = prompts.shape[1]
    slot = jnp.arange(p0 + p)[None, :]
    pad = (p - prompt_lens)[:, None]
    src = jnp.where((slot >= pad) & (slot < pad + p0), slot - pad, slot)  # [U, P0 + P]
    src = src[:, :, None, None]  # gathered along the slot axis of [..., U, P0 + P, K, Dh]
    kv = jax.tree.map(lambda a: jnp.take_along_axis(a, src.reshape((1,) * (a.ndim - 4) + src.shape), axis=-3), kv)
    return logits, kv, prompt_lens + p0


def prefill(params, prefix_kv, prompts, prompt_lens, row_live, row_seeds, values, mode, samples, new_bucket,
            cache_dtype, *, config, kernels, residual, eos_ids, pad_id, counter):
    """Runs the distinct prompts once, keeps their K/V as the shared prompt cache, samples token 0 of each of
    their `samples` rows.

    prefix_kv: the K/V of tokens that every prompt starts with (`prefix_pass`; None: none); prompts [U, P] the
    rest of each prompt, left-padded; prompt_lens [U] their lengths; row_live [U * samples] (False = batch
    padding); row_seeds [U * samples, 3] uint32 (seed, prompt hash, sample index). Row u * samples + j is sample
    j of prompt u. `mode` to `cache_dtype` are static (jit's static_argnums: with in_shardings it takes no
    keywords).
    """
    counter["prefill"] += 1  # runs at trace time only: counts compilations
    logits, kv, prompt_lens = _prompts_with_prefix(params, prefix_kv, prompts, prompt_lens, config=config,
                                                   kernels=kernels, residual=residual, kv_dtype=cache_dtype)
    prompt_kv = jax.tree.map(lambda a: jnp.swapaxes(a, -3, -2), kv)  # [..., U, K, P0 + P, Dh]
    rows = prompts.shape[0] * samples
    # [..., U, K, P, Dh] -> an empty [..., rows, K, new_bucket, Dh]: the same layout (per layer or stacked)
    new_kv = jax.tree.map(lambda a: jnp.zeros(a.shape[:-4] + (rows, a.shape[-3], new_bucket, a.shape[-1]),
                                              cache_dtype), prompt_kv)
    keys = jax.vmap(lambda s: functools.reduce(jax.random.fold_in, s[1:], jax.random.key(s[0])))(row_seeds)
    state = State(
        prompt_kv=prompt_kv,
        new_kv=new_kv,
        tokens=jnp.full((rows, new_bucket), pad_id, jnp.int32),
        logprobs=jnp.zeros((rows, new_bucket), jnp.float32),
        done=~row_live,
        length=jnp.zeros((rows,), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        prompt_lens=prompt_lens,
        keys=keys,
    )
    logits = jnp.repeat(logits, samples, axis=0)
    return _record(state, logits, values, mode, eos_ids, pad_id)


def attend_shared_prompt(q, k, v, masks):
    """Decode attention of one new token per row over its prompt's shared cache and its own new tokens.

    q [R, 1, H, Dh] with R = U prompts x M samples; k and v are (prompt cache [U, K, P, Dh], new-token cache
    [R, K, N, Dh]); masks are (prompt [U, P], new tokens [N]) bool. One softmax over both parts.
    """
    (kp, kn), (vp, vn) = k, v
    prompt_mask, new_mask = masks
    r, _, h, dh = q.shape
    u, kv, _, _ = kp.shape
    m, g, n = r // u, h // kv, kn.shape[2]
    scale = dh ** -0.5
    qp = q.reshape(u, m, kv, g, dh)
    sp = jnp.einsum("umkgd,ukpd->ukpmg", qp, kp.astype(q.dtype), preferred_element_type=jnp.float32)
    sp = jnp.transpose(jnp.where(prompt_mask[:, None, :, None, None], sp * scale, attention.MASKED), (0, 1, 3, 4, 2))
    # computed as [R, K, N, G] (the cache as the matmul's tall operand): 2x faster than [R, K, G, N] on XLA:CPU
    sn = jnp.einsum("rkgd,rknd->rkng", q.reshape(r, kv, g, dh), kn.astype(q.dtype),
                    preferred_element_type=jnp.float32)
    sn = jnp.where(new_mask[:, None], sn * scale, attention.MASKED)
    sn = jnp.transpose(sn.reshape(u, m, kv, n, g), (0, 2, 1, 4, 3))  # [U, K, M, G, N] like sp
    top = jnp.maximum(jnp.max(sp, axis=-1), jnp.max(sn, axis=-1))[..., None]
    ep, en = jnp.exp(sp - top), jnp.exp(sn - top)
    total = jnp.sum(ep, axis=-1) + jnp.sum(en, axis=-1)
    op = jnp.einsum("ukmgp,ukpd->ukmgd", ep.astype(q.dtype), vp.astype(q.dtype))
    en_rows = jnp.transpose(en, (0, 2, 1, 3, 4)).reshape(r, kv, g, n)
    on = jnp.einsum("rkgn,rknd->rkgd", en_rows.astype(q.dtype), vn.astype(q.dtype))
    out = op + jnp.transpose(on.reshape(u, m, kv, g, dh), (0, 2, 1, 3, 4))
    out = out / total[..., None].astype(q.dtype)
    return jnp.transpose(out, (0, 2, 1, 3, 4)).reshape(r, 1, h, dh)



def decode(params, state: State, limit, values, mode, *, config, kernels, residual, eos_ids, pad_id, counter):
    """Generates until `limit` tokens or until every row has ended, all inside one while_loop."""
    counter["decode"] += 1
    prompt_slots = jax.tree.leaves(state.prompt_kv)[0].shape[-2]
    rows, new_bucket = state.tokens.shape
    samples = rows // state.prompt_lens.shape[0]
    prompt_mask = jnp.arange(prompt_slots)[None, :] >= prompt_slots - state.prompt_lens[:, None]
    new_slots = jnp.arange(new_bucket)
    row_lens = jnp.repeat(state.prompt_lens, samples)
    ops = layout(config, kernels, (rows, 1))

    def step(s: State) -> State:
        t = s.step
        last = jax.lax.dynamic_index_in_dim(s.tokens, t - 1, axis=1, keepdims=False)
        rope = llama.rope((row_lens + t - 1)[:, None], config, max_position=prompt_slots + new_bucket)
        masks = (prompt_mask, new_slots <= t - 1)

        def body(x, lp, prompt_kv, new_kv):
            (kp, vp), (kn, vn) = prompt_kv, new_kv
            written = []

            def splice(k, v):
                kn2 = jax.lax.dynamic_update_slice_in_dim(kn, jnp.swapaxes(k, 1, 2).astype(kn.dtype), t - 1, axis=2)
                vn2 = jax.lax.dynamic_update_slice_in_dim(vn, jnp.swapaxes(v, 1, 2).astype(vn.dtype), t - 1, axis=2)
                written.append((kn2, vn2))
                return (kp, kn2), (vp, vn2)

            x = llama.layer(lp, x, rope, masks, config, layout=ops, kv_update=splice, attend=attend_shared_prompt)
            return _constrain(x, residual), written[0]

        def stacked_body(carry, lp, prompt_kv, i):
            # The stacked cache rides in the scan's carry and each layer writes its one new slot in place: as the
            # scan's xs/ys (`body`) every step re-zeroed, copied and re-wrote the whole stacked caches
            # (docs/decode.md).
            x, (kn_all, vn_all) = carry
            (kp, vp), written = prompt_kv, []

            def splice(k, v):
                at = (i, 0, 0, t - 1, 0)
                kn2 = jax.lax.dynamic_update_slice(kn_all, jnp.swapaxes(k, 1, 2)[None].astype(kn_all.dtype), at)
                vn2 = jax.lax.dynamic_update_slice(vn_all, jnp.swapaxes(v, 1, 2)[None].astype(vn_all.dtype), at)
                written.append((kn2, vn2))
                layer_kv = (jax.lax.dynamic_index_in_dim(a, i, keepdims=False) for a in (kn2, vn2))
                return tuple(zip((kp, vp), layer_kv))

            x = llama.layer(lp, x, rope, masks, config, layout=ops, kv_update=splice, attend=attend_shared_prompt)
            return (_constrain(x, residual), written[0]), None

        x = _constrain(ops.embed(params, last[:, None]), residual)
        if isinstance(params["layers"], (list, tuple)):
            x, new_kv = llama.run_layers(body, x, params["layers"], s.prompt_kv, s.new_kv)
        else:
            layer_ids = jnp.arange(jax.tree.leaves(s.new_kv)[0].shape[0])
            (x, new_kv), _ = llama.run_layers(stacked_body, (x, s.new_kv), params["layers"], s.prompt_kv, layer_ids)
        return _record(s._replace(new_kv=new_kv), _next_logits(params, ops, x), values, mode, eos_ids, pad_id)

    def more(s: State):
        return (s.step < limit) & ~jnp.all(s.done)

    return jax.lax.while_loop(more, step, state)


def score(params, prefix_kv, prompts, prompt_lens, candidates, *, config, kernels, residual, counter):
    """Log-probabilities [U, len(candidates)] of each candidate as the next token after prompts[u] (following the
    prefix whose K/V `prefix_kv` holds, as `prefill`'s)."""
    counter["score"] += 1
    logits, _, _ = _prompts_with_prefix(params, prefix_kv, prompts, prompt_lens, config=config, kernels=kernels,
                                        residual=residual)
    return jax.nn.log_softmax(logits, axis=-1)[:, candidates]
