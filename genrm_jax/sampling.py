"""Sampling from a Llama over a preallocated KV cache: one prefill, then a compiled decode loop.

Why it is shaped this way (measured on a 2-core CPU; figures in the README):
- Layers are unrolled over per-layer params, each with its own cache arrays that `dynamic_update_slice`
  updates in place inside `lax.while_loop`; a stacked cache under `scan` is copied every step.
- Activations are feature-major and weights [out, in] (`models/feature_major.py`): with 1 to 32 tokens per
  step, XLA:CPU's matmuls run 1.5x faster that way round (decode step of 4 prompts x 8 samples: 125 -> 98 ms).
- The cache is split in two: the prompt's K/V, written once by the prefill and stored once per *distinct
  prompt* [prompts, kv_heads, prompt_slots, head_dim], and the generated tokens' K/V per row
  [rows, kv_heads, new_slots, head_dim]. The n samples of a prompt share its prefill and its prompt cache:
  decode attends to the prompt with all n x (heads per KV head) queries of that prompt as one matrix (a
  real matmul instead of n thin ones, and the prompt's cache is read once, not n times), then joins the
  softmax with the row's own generated keys.
- Prompts are left-padded to a shape bucket: every row writes the same cache slot at each step (one scalar
  index) and another prompt length inside the bucket reuses the compiled kernels.
- Sorting the 49,152-token vocabulary every step is what makes naive top-p slow. The top-k / top-p
  threshold is found by bisection over float bit patterns instead (one fused reduction per step, no sort),
  and the token by a two-level inverse CDF.
- Every row's token is a function of that row's logits and its own uniform alone: no batch-wide choice of
  code path (an earlier top-k fast path for small batches, chosen by one `lax.cond` for the whole batch,
  turned the same uniform into different tokens depending on the batch's other rows). Per-row PRNG keys
  come from (seed, prompt content, sample index), so a sample does not depend on which other prompts share
  its batch, nor on the batch size.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from genrm_jax.models import attention, feature_major, llama

_CDF_BLOCK = 256  # inverse-CDF search: block sums, then a cumsum inside the chosen block
_THRESHOLD_ITERS = 16  # top-p bisection steps: each is a pass over the vocabulary


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0.0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    n: int = 1  # samples per prompt; they share one prefill
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False
    seed: int = 0  # same seed -> same samples (independent of batch composition)

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"SamplingParams.{field}={getattr(self, field)!r}: {why}")

        if not self.temperature >= 0.0:
            bad("temperature", "expected >= 0 (0 means greedy)")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "expected 0 < top_p <= 1")
        if self.top_k < 0:
            bad("top_k", "expected >= 0 (0 = off)")
        if self.max_new_tokens < 1:
            bad("max_new_tokens", "expected >= 1")
        if self.n < 1:
            bad("n", "expected >= 1")
        if isinstance(self.stop_strings, str) or any(not s for s in self.stop_strings):
            bad("stop_strings", "expected a tuple of non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclasses.dataclass
class Completion:
    token_ids: list[int]
    text: str
    logprobs: list[float]  # log-probability of each token under the model (log-softmax of the raw logits)
    finish_reason: str  # "eos" | "stop" | "length"


# ------------------------------------------------------------------------------------------ sampler


class _Mode(NamedTuple):
    """Static sampling switches (a compiled kernel each); the values themselves are traced."""
    greedy: bool
    top_k: bool
    top_p: bool


def _mode(sp: SamplingParams) -> _Mode:
    return _Mode(sp.greedy, sp.top_k > 0, sp.top_p < 1.0)


def _bisect(lo, hi, ok, iters):
    """Largest x in [lo, hi) with ok(x), per row; ok must hold at lo and be monotone decreasing."""
    def body(_, c):
        lo, hi = c
        mid = lo + (hi - lo) // 2
        good = ok(mid)
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

    return jax.lax.fori_loop(0, iters, body, (lo, hi))[0]


def _exact_threshold(probs, top_k, top_p, iters: int = _THRESHOLD_ITERS):
    """Smallest kept probability (as int32 bits) of the top-k then top-p set, by bisection over bit patterns.

    Non-negative float32 values order like their int32 bit patterns, so bisecting integers finds the
    threshold with one fused reduction over the vocabulary per step and no sort. The bracket starts at
    [bits(min kept bound), bits(max) + 1); `iters` steps narrow it to 2^-(iters - 28) of it, i.e. at 16 steps
    a token within ~5e-4 (relative) below the true threshold may also be kept. The search keeps the low end,
    which always satisfies the top-k count and top-p mass.
    """
    def at_least(t):  # the comparison runs on floats: XLA:CPU vectorises it twice as well as on ints
        return probs >= jax.lax.bitcast_convert_type(t, jnp.float32)[:, None]

    hi = jax.lax.bitcast_convert_type(jnp.max(probs, axis=-1), jnp.int32) + 1  # nothing is >= hi
    lo = jnp.zeros_like(hi)
    if top_k is not None:
        def enough(t):
            return jnp.sum(at_least(t).astype(jnp.int32), axis=-1) >= top_k
        lo = _bisect(lo, hi, enough, 31)  # counts are integers: no tolerance here
    if top_p is not None:
        kept = jnp.where(at_least(lo), probs, 0.0)
        mass = jnp.sum(kept, axis=-1)
        target = top_p * mass
        # Every token below (1 - top_p) * mass / V together holds less than (1 - top_p) of the mass, so that
        # probability always passes: a far tighter low end than 0.
        floor = (1.0 - top_p) * mass / probs.shape[-1]
        lo = jnp.maximum(lo, jax.lax.bitcast_convert_type(floor.astype(jnp.float32), jnp.int32))

        def heavy(t):
            return jnp.sum(jnp.where(at_least(t), probs, 0.0), axis=-1) >= target
        lo = _bisect(lo, hi, heavy, iters)
    return lo


def _inverse_cdf(weights, u):
    """Index drawn from each row of non-negative `weights` with a uniform u in [0, 1).

    Two levels instead of a cumsum over the whole vocabulary: block sums pick the block, a cumsum inside
    that block picks the token.
    """
    rows, v = weights.shape
    block = min(_CDF_BLOCK, v)
    nblocks = -(-v // block)
    w = jnp.pad(weights, ((0, 0), (0, nblocks * block - v))).reshape(rows, nblocks, block)
    csum = jnp.cumsum(jnp.sum(w, axis=-1), axis=-1)
    target = u * csum[:, -1]
    blk = jnp.minimum(jnp.sum(csum <= target[:, None], axis=-1), nblocks - 1)
    before = jnp.where(blk > 0, jnp.take_along_axis(csum, jnp.maximum(blk - 1, 0)[:, None], 1)[:, 0], 0.0)
    inner = jnp.take_along_axis(w, blk[:, None, None], 1)[:, 0]
    within = jnp.cumsum(inner, axis=-1) + before[:, None]
    idx = blk * block + jnp.sum(within <= target[:, None], axis=-1)
    # Rounding can leave the target at or past the last kept token: take the last one with weight.
    last = v - 1 - jnp.argmax((weights > 0)[:, ::-1], axis=-1)
    return jnp.minimum(idx, last).astype(jnp.int32)


def sample_tokens(logits, u, mode: _Mode, temperature, top_k, top_p):
    """One token per row from [rows, V] logits and a uniform u [rows]: greedy, or temperature then top-k
    then top-p (Hugging Face's order). Returns (tokens [rows] int32, log-probs under the raw model [rows]).

    Every operation is per row, so a row's token does not depend on the other rows of the batch.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    if mode.greedy:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        probs = jax.nn.softmax(logits / temperature, axis=-1)
        if mode.top_k or mode.top_p:
            t = _exact_threshold(probs, top_k if mode.top_k else None, top_p if mode.top_p else None)
            probs = jnp.where(probs >= jax.lax.bitcast_convert_type(t, jnp.float32)[:, None], probs, 0.0)
        tok = _inverse_cdf(probs, u)
    logprob = jnp.take_along_axis(logits, tok[:, None], 1)[:, 0] - lse
    return tok, logprob


# ------------------------------------------------------------------------------------------ kernels


class _Values(NamedTuple):
    """Traced sampling values: changing them does not recompile."""
    temperature: jax.Array  # f32 scalar (unused when greedy)
    top_k: jax.Array  # i32 scalar
    top_p: jax.Array  # f32 scalar
    stop_at_eos: jax.Array  # bool scalar


class _State(NamedTuple):
    prompt_kv: tuple  # per layer (k, v), each [prompts, kv_heads, prompt_slots, head_dim]; read-only in decode
    new_kv: tuple  # per layer (k, v), each [rows, kv_heads, new_slots, head_dim]; rows = prompts x samples
    tokens: jax.Array  # [rows, new_bucket] int32, generated tokens (pad after a row ends)
    logprobs: jax.Array  # [rows, new_bucket] f32
    done: jax.Array  # [rows] bool
    length: jax.Array  # [rows] int32, tokens generated (EOS included)
    step: jax.Array  # i32 scalar, tokens generated so far by the batch
    prompt_lens: jax.Array  # [prompts] int32
    keys: jax.Array  # [rows] typed PRNG keys


def _uniforms(keys, step):
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step), (), jnp.float32))(keys)


def _record(state: _State, logits, values: _Values, mode: _Mode, eos_ids, pad_id) -> _State:
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


def _final_logits(params, x, config):
    """x [D, T] (feature-major) -> logits [T, V] of those tokens."""
    return feature_major.logits(params, feature_major.rms_norm(x, params["final_norm"], config.rms_norm_eps), config)


def _prompt_pass(params, prompts, prompt_lens, config, kv_update=None):
    """Left-padded prompts [U, P] through every layer -> the last token's logits [U, V]."""
    u, p = prompts.shape
    segment = (jnp.arange(p)[None, :] >= p - prompt_lens[:, None]).astype(jnp.int32)
    rope = llama.rope(llama.segment_positions(segment), config, max_position=p)
    mask = llama.causal_mask(segment)
    x = feature_major.embed(params, prompts, config)
    for lp in params["layers"]:
        x = feature_major.layer(lp, x, rope, mask, config, (u, p), kv_update=kv_update)
    return _final_logits(params, x.reshape(-1, u, p)[:, :, -1], config)


def _prefill(params, prompts, prompt_lens, row_live, row_seeds, values, *, config, mode, samples, new_bucket,
             cache_dtype, eos_ids, pad_id, counter):
    """Runs the distinct prompts once, keeps their K/V as the shared prompt cache, samples token 0 of each of
    their `samples` rows.

    prompts [U, P] left-padded; prompt_lens [U]; row_live [U * samples] (False = batch padding);
    row_seeds [U * samples, 3] uint32 (seed, prompt hash, sample index). Row u * samples + j is sample j of
    prompt u.
    """
    counter["prefill"] += 1  # runs at trace time only: counts compilations
    u = prompts.shape[0]
    kv = []

    def keep(k, v):
        kv.append((k, v))
        return k, v

    logits = _prompt_pass(params, prompts, prompt_lens, config, kv_update=keep)

    rows = u * samples
    empty = jnp.zeros((rows, config.num_kv_heads, new_bucket, config.head_dim), cache_dtype)
    to_cache = lambda a: jnp.swapaxes(a, 1, 2).astype(cache_dtype)  # noqa: E731  [U, P, K, Dh] -> [U, K, P, Dh]
    keys = jax.vmap(lambda s: functools.reduce(jax.random.fold_in, s[1:], jax.random.key(s[0])))(row_seeds)
    state = _State(
        prompt_kv=tuple((to_cache(k), to_cache(v)) for k, v in kv),
        new_kv=tuple((empty, empty) for _ in kv),
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


def _attend_shared_prompt(q, k, v, masks):
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


def _decode(params, state: _State, limit, values, *, config, mode, eos_ids, pad_id, counter):
    """Generates until `limit` tokens or until every row has ended, all inside one while_loop."""
    counter["decode"] += 1
    prompt_slots = state.prompt_kv[0][0].shape[2]
    samples = state.tokens.shape[0] // state.prompt_lens.shape[0]
    prompt_mask = jnp.arange(prompt_slots)[None, :] >= prompt_slots - state.prompt_lens[:, None]
    new_slots = jnp.arange(state.tokens.shape[1])
    row_lens = jnp.repeat(state.prompt_lens, samples)

    def step(s: _State) -> _State:
        t = s.step
        last = jax.lax.dynamic_index_in_dim(s.tokens, t - 1, axis=1, keepdims=False)
        rope = llama.rope((row_lens + t - 1)[:, None], config, max_position=prompt_slots + new_slots.size)
        masks = (prompt_mask, new_slots <= t - 1)
        x = feature_major.embed(params, last[:, None], config)
        new_kv = []
        for lp, (kp, vp), (kn, vn) in zip(params["layers"], s.prompt_kv, s.new_kv):
            def splice(k, v, kp=kp, vp=vp, kn=kn, vn=vn):
                kn = jax.lax.dynamic_update_slice_in_dim(kn, jnp.swapaxes(k, 1, 2).astype(kn.dtype), t - 1, axis=2)
                vn = jax.lax.dynamic_update_slice_in_dim(vn, jnp.swapaxes(v, 1, 2).astype(vn.dtype), t - 1, axis=2)
                new_kv.append((kn, vn))
                return (kp, kn), (vp, vn)

            x = feature_major.layer(lp, x, rope, masks, config, (x.shape[1], 1), kv_update=splice,
                                    attend=_attend_shared_prompt)
        s = s._replace(new_kv=tuple(new_kv))
        return _record(s, _final_logits(params, x, config), values, mode, eos_ids, pad_id)

    def more(s: _State):
        return (s.step < limit) & ~jnp.all(s.done)

    return jax.lax.while_loop(more, step, state)


def _score(params, prompts, prompt_lens, candidates, *, config, counter):
    counter["score"] += 1
    logits = _prompt_pass(params, prompts, prompt_lens, config)
    return jax.nn.log_softmax(logits, axis=-1)[:, candidates]


# ------------------------------------------------------------------------------------------- engine


def length_bucket(n: int, minimum: int = 16) -> int:
    """Rounds a length up to one of four sizes per octave (16, 20, 24, 28, 32, 40, ...): at most 25% padding,
    few enough shapes that compiled kernels get reused."""
    if n <= minimum:
        return minimum
    step = 2 ** max(0, (n - 1).bit_length() - 3)
    return -(-n // step) * step


def batch_bucket(n: int, maximum: int) -> int:
    return min(maximum, 1 << max(0, (n - 1).bit_length()))


def _prompt_hash(ids) -> int:
    # Keys depend on the prompt's content, not its place in the batch: same seed, same samples.
    return zlib.crc32(np.asarray(ids, np.int32).tobytes())


def _left_pad(prompts: list[list[int]], width: int, rows: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((rows, width), pad_id, np.int32)
    lens = np.ones((rows,), np.int32)  # batch-padding rows hold one pad token
    for i, ids in enumerate(prompts):
        tokens[i, width - len(ids):] = ids
        lens[i] = len(ids)
    return tokens, lens


class Engine:
    """Batched sampling and next-token scoring for one model (see the module docstring for the design)."""

    def __init__(self, model, *, cache_dtype: str = "float32", max_batch: int = 32):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: expected >= 1")
        self.config: llama.LlamaConfig = model.config
        self.tokenizer = model.tokenizer
        self.cache_dtype = jnp.dtype(cache_dtype)
        self.max_batch = max_batch
        self.params = feature_major.prepare(model.params, model.config)  # see models/feature_major.py
        cfg = self.config
        self.eos_ids = tuple(int(e) for e in cfg.eos_token_ids)
        self.pad_id = int(cfg.pad_token_id if cfg.pad_token_id is not None else (self.eos_ids or (0,))[0])
        self.compilations: collections.Counter = collections.Counter()  # traces per kernel, for tests
        self.stats: collections.Counter = collections.Counter()  # prompts prefilled, rows decoded
        statics = dict(config=cfg, eos_ids=self.eos_ids, pad_id=self.pad_id, counter=self.compilations)
        self._prefill = jax.jit(functools.partial(_prefill, **statics),
                                static_argnames=("mode", "samples", "new_bucket", "cache_dtype"))
        self._decode = jax.jit(functools.partial(_decode, **statics), static_argnames=("mode",),
                               donate_argnames=("state",))
        self._score = jax.jit(functools.partial(_score, config=cfg, counter=self.compilations))

    def set_params(self, params) -> None:
        """Samples from new weights (e.g. after a training iteration) with the kernels already compiled: the
        params are an argument of every jitted kernel, so only a change of shape or dtype would retrace."""
        new = feature_major.prepare(params, self.config)
        old_sig = jax.tree.map(lambda a: (a.shape, a.dtype), self.params)
        new_sig = jax.tree.map(lambda a: (a.shape, a.dtype), new)
        if old_sig != new_sig:
            raise ValueError("set_params: the new params differ in structure, shape or dtype from the engine's")
        self.params = new

    # -------------------------------------------------------------------------------- memory

    def cache_bytes(self, prompts: int, prompt_len: int, max_new_tokens: int, n: int = 1) -> int:
        """Bytes of the KV cache for one batch of `prompts` prompts with `n` samples each (shapes rounded up
        to their buckets): the prompt part once per prompt, the generated part once per sample."""
        c = self.config
        _, u, m = self._batch_shape(prompts, n)
        slots = u * length_bucket(prompt_len) + u * m * length_bucket(max_new_tokens)
        return 2 * c.num_layers * c.num_kv_heads * c.head_dim * slots * self.cache_dtype.itemsize

    def describe_cache(self, prompts: int, prompt_len: int, max_new_tokens: int, n: int = 1) -> str:
        c = self.config
        _, u, m = self._batch_shape(prompts, n)
        return (f"KV cache: 2 x {c.num_layers} layers x {c.num_kv_heads} kv heads x {c.head_dim} x "
                f"({u} prompts x {length_bucket(prompt_len)} slots + {u * m} rows x "
                f"{length_bucket(max_new_tokens)} slots) x {self.cache_dtype.name} = "
                f"{self.cache_bytes(prompts, prompt_len, max_new_tokens, n) / 2**20:.1f} MiB")

    def _batch_shape(self, prompts: int, n: int) -> tuple[int, int, int]:
        """(prompts per batch, prompt slots of the compiled batch, samples per prompt in a batch)."""
        m = min(n, self.max_batch)  # a prompt with more samples than max_batch is split over batches
        per_batch = max(1, self.max_batch // m)
        return per_batch, batch_bucket(min(prompts, per_batch), per_batch), m

    # ------------------------------------------------------------------------------ sampling

    def generate(self, prompts: list[list[int]], sp: SamplingParams, *, progress: bool = False,
                 on_prompt=None) -> list[list[Completion]]:
        """result[i][j] is sample j of prompt i. Prompts are sorted by length and batched, whole prompts
        per batch, so that a prompt's samples share its prefill and its prompt cache (a prompt whose n exceeds
        max_batch is prefilled once per batch).

        `on_prompt(i, completions)` is called as soon as all n samples of prompt i exist (after the batch
        that finishes them), so a caller can write results while later batches still run.
        """
        out: list[list[Completion | None]] = [[None] * sp.n for _ in prompts]
        missing = [sp.n] * len(prompts)
        batches = self._plan(prompts, sp)
        bar = _progress(len(prompts) * sp.n, "sampling", "seq") if progress else None
        for batch in batches:
            done = self._generate_batch(prompts, batch, sp)
            for (i, j), completion in done:
                out[i][j] = completion
                missing[i] -= 1
                if missing[i] == 0 and on_prompt is not None:
                    on_prompt(i, out[i])
            if bar is not None:
                bar.update(len(done))
        if bar is not None:
            bar.close()
        return out  # type: ignore[return-value]

    def warmup(self, prompts: list[list[int]], sp: SamplingParams) -> None:
        """Compiles every kernel that `generate(prompts, sp)` will use (one decode step per batch shape),
        so that a timed run measures sampling, not compilation."""
        seen = set()
        for batch in self._plan(prompts, sp):
            arrays, _ = self._batch_inputs(prompts, batch, sp)
            shapes = tuple(np.shape(a) for a in arrays)
            if shapes not in seen:
                seen.add(shapes)
                self._run_kernels(arrays, sp, limit=min(2, sp.max_new_tokens))  # one decode step runs the loop body

    def _plan(self, prompts, sp: SamplingParams) -> list[tuple[list[int], int, int]]:
        """Batches of (prompt indices, first sample, end sample): whole prompts sorted by length, as many
        per batch as max_batch rows allow; a prompt with n > max_batch gets batches of its own."""
        self._check_prompts(prompts, sp.max_new_tokens)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        per_batch, _, m = self._batch_shape(len(prompts), sp.n)
        return [(order[k:k + per_batch], j, min(j + m, sp.n))
                for k in range(0, len(order), per_batch) for j in range(0, sp.n, m)]

    def _batch_inputs(self, prompts, batch, sp: SamplingParams):
        """Arrays for `_prefill` and, per row, its (prompt, sample) or None for batch padding."""
        idx, j0, j1 = batch
        _, u, m = self._batch_shape(len(idx), j1 - j0)
        prompt_bucket = length_bucket(max(len(prompts[i]) for i in idx))
        tokens, lens = _left_pad([prompts[i] for i in idx], prompt_bucket, u, self.pad_id)
        rows: list[tuple[int, int] | None] = [None] * (u * m)
        row_seeds = np.zeros((u * m, 3), np.uint32)
        for a, i in enumerate(idx):
            for j in range(j0, j1):
                r = a * m + j - j0
                rows[r] = (i, j)
                row_seeds[r] = (sp.seed & 0xFFFFFFFF, _prompt_hash(prompts[i]), j)
        row_live = np.array([r is not None for r in rows])
        return (tokens, lens, row_live, row_seeds), rows

    def _run_kernels(self, arrays, sp: SamplingParams, *, limit: int | None = None, stop=None) -> _State:
        """Prefill, then decode to `limit` tokens (default max_new_tokens), calling `stop(state) -> done`
        every few tokens when given."""
        values = _Values(jnp.float32(sp.temperature or 1.0), jnp.int32(sp.top_k), jnp.float32(sp.top_p),
                         jnp.bool_(not sp.ignore_eos))
        mode = _mode(sp)
        tokens, lens, row_live, row_seeds = arrays
        self.stats["prefill_prompts"] += int(np.sum(row_live.reshape(len(lens), -1).any(axis=1)))
        self.stats["rows"] += int(row_live.sum())
        limit = sp.max_new_tokens if limit is None else limit
        state = self._prefill(self.params, *arrays, values, mode=mode, samples=len(row_live) // len(lens),
                              new_bucket=length_bucket(sp.max_new_tokens), cache_dtype=self.cache_dtype.name)
        decode = functools.partial(self._decode, self.params, values=values, mode=mode)
        if stop is None:
            return decode(state, limit=jnp.int32(limit))
        chunk = 16  # stop strings are text: check the decoded text between chunks of compiled steps
        while True:
            state = decode(state, limit=jnp.int32(min(int(state.step) + chunk, limit)))
            done = stop(state)
            if int(state.step) >= limit or done.all():
                return state
            state = state._replace(done=jnp.asarray(done))

    def _generate_batch(self, prompts, batch, sp: SamplingParams) -> list[tuple[tuple[int, int], Completion]]:
        arrays, rows = self._batch_inputs(prompts, batch, sp)
        live = [r for r, row in enumerate(rows) if row is not None]
        stopped: dict[int, tuple[int, int]] = {}

        def stop(state):
            toks, length, done = jax.device_get((state.tokens, state.length, state.done))
            done = np.array(done)  # writable copy
            for r in live:
                if r not in stopped and not done[r]:
                    hit = self._find_stop(toks[r, :length[r]], sp.stop_strings)
                    if hit is not None:
                        stopped[r] = hit
                        done[r] = True
            return done

        state = self._run_kernels(arrays, sp, stop=stop if sp.stop_strings else None)
        return list(zip([rows[r] for r in live], self._completions(state, live, sp, stopped)))

    def _find_stop(self, ids, stop_strings) -> tuple[int, int] | None:
        """(tokens to keep, characters to keep) for the earliest stop string in the decoded ids, or None."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        hits = [(text.find(s), s) for s in stop_strings if s in text]
        if not hits:
            return None
        cut = min(hits)[0]
        end = cut + len(min(hits)[1])
        for n in range(1, len(ids) + 1):  # the first token prefix whose text holds the stop string
            if len(self.tokenizer.decode(list(ids[:n]), skip_special_tokens=False)) >= end:
                return n, cut
        return len(ids), cut

    def _completions(self, state: _State, live: list[int], sp: SamplingParams, stopped) -> list[Completion]:
        toks, logprobs, length = jax.device_get((state.tokens, state.logprobs, state.length))
        out = []
        for r in live:
            n = int(length[r])
            ids, lps = toks[r, :n].tolist(), logprobs[r, :n].tolist()
            if r in stopped:
                keep, cut = stopped[r]
                ids, lps = ids[:keep], lps[:keep]
                text = self.tokenizer.decode(ids, skip_special_tokens=False)[:cut]
                reason = "stop"
            elif ids and ids[-1] in self.eos_ids and not sp.ignore_eos:
                text, reason = self.tokenizer.decode(ids[:-1], skip_special_tokens=False), "eos"
            else:
                text, reason = self.tokenizer.decode(ids, skip_special_tokens=False), "length"
            out.append(Completion(ids, text, lps, reason))
        return out

    # ------------------------------------------------------------------------------- scoring

    def score_next_token(self, prompts: list[list[int]], candidates: list[int]) -> np.ndarray:
        """[len(prompts), len(candidates)] log-probabilities (over the full vocabulary) of each candidate
        as the next token after each prompt: one forward pass per batch, no decoding."""
        self._check_prompts(prompts, 0)
        bad = [c for c in candidates if not 0 <= c < self.config.vocab_size]
        if not candidates or bad:
            raise ValueError(f"candidates {list(candidates)}: expected token ids in [0, {self.config.vocab_size})")
        cand = jnp.asarray(candidates, jnp.int32)
        out = np.zeros((len(prompts), len(candidates)), np.float32)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for k in range(0, len(order), self.max_batch):
            idx = order[k:k + self.max_batch]
            tokens, lens = _left_pad([prompts[i] for i in idx], length_bucket(max(len(prompts[i]) for i in idx)),
                                     batch_bucket(len(idx), self.max_batch), self.pad_id)
            out[idx] = np.asarray(self._score(self.params, tokens, lens, cand))[:len(idx)]
        return out

    def _check_prompts(self, prompts, max_new_tokens: int) -> None:
        limit = self.config.max_position_embeddings
        for i, ids in enumerate(prompts):
            if len(ids) == 0:
                raise ValueError(f"prompt {i} is empty")
            if len(ids) + max_new_tokens > limit:
                raise ValueError(f"prompt {i}: {len(ids)} tokens + max_new_tokens={max_new_tokens} exceed the "
                                 f"model's context of {limit}")
            if min(ids) < 0 or max(ids) >= self.config.vocab_size:
                raise ValueError(f"prompt {i}: token ids must lie in [0, {self.config.vocab_size})")


def _progress(total, desc, unit):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
