"""Sampling from a Llama over a preallocated KV cache: one prefill, then a compiled decode loop.

Why it is shaped this way (measured on a 2-core CPU, see NOTES.md):
- Layers are unrolled over per-layer params, each with its own cache array that `dynamic_update_slice`
  updates in place inside `lax.while_loop`; a stacked cache under `scan` is copied every step.
- The cache is stored [batch, kv_heads, slots, head_dim], the layout of the attention contraction, so
  XLA needs no transpose of the whole cache per layer per step.
- Prompts are left-padded to a shape bucket: every row writes the same cache slot at each step (one scalar
  index) and another prompt length inside the bucket reuses the compiled kernels.
- The n samples of a prompt share one prefill: the prompt's cache rows are gathered into its sample rows.
- Sorting the 49,152-token vocabulary every step is what makes naive top-p slow. The top-k / top-p
  threshold is found by bisection over float bit patterns instead (one fused reduction per step, no sort),
  and the token by a two-level inverse CDF. Small batches first try the top `_NUCLEUS_K` logits (a
  partial sort), which hold the whole kept set whenever the distribution is peaked.
- Per-row PRNG keys come from (seed, prompt content, sample index), so a sample does not depend on which
  other prompts share its batch.
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

from genrm_jax.models import llama

_NUCLEUS_K = 64  # top-k width of the fast path; the exact fallback takes over beyond it
# SmolLM2 at temperature 1 has a median top-p(0.95) nucleus of hundreds of tokens, so in a batch of more
# rows than this one almost always needs the fallback and the top-k pass would be wasted.
_NUCLEUS_MAX_ROWS = 8
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


def sample_tokens(logits, u, mode: _Mode, temperature, top_k, top_p, *, nucleus_k: int | None = _NUCLEUS_K):
    """One token per row from [rows, V] logits and a uniform u [rows]: greedy, or temperature then top-k
    then top-p (Hugging Face's order). Returns (tokens [rows] int32, log-probs under the raw model [rows]).

    `nucleus_k` is the width of the top-k fast path, None to go straight to the bisection.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    if mode.greedy:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        scaled = logits / temperature
        exact = functools.partial(_sample_truncated, scaled, u, mode, top_k, top_p)
        if nucleus_k and (mode.top_k or mode.top_p):
            tok = _sample_nucleus_or(scaled, u, mode, top_k, top_p, nucleus_k, fallback=exact)
        else:
            tok = exact()
    logprob = jnp.take_along_axis(logits, tok[:, None], 1)[:, 0] - lse
    return tok, logprob


def _sample_truncated(scaled, u, mode, top_k, top_p):
    """Exact path: threshold by bisection over the whole vocabulary, then inverse CDF."""
    probs = jax.nn.softmax(scaled, axis=-1)
    if mode.top_k or mode.top_p:
        t = _exact_threshold(probs, top_k if mode.top_k else None, top_p if mode.top_p else None)
        probs = jnp.where(probs >= jax.lax.bitcast_convert_type(t, jnp.float32)[:, None], probs, 0.0)
    return _inverse_cdf(probs, u)


def _sample_nucleus_or(scaled, u, mode, top_k, top_p, nucleus_k, fallback):
    """Fast path: when every row's kept set lies inside its top `nucleus_k` logits, sample from those;
    otherwise run `fallback` (traced inside a cond, so it costs nothing when not taken)."""
    rows, v = scaled.shape
    kk = min(nucleus_k, v)
    # The barrier keeps XLA from slicing the top-k output further, which turns it back into a full sort.
    top_vals, top_idx = jax.lax.optimization_barrier(jax.lax.top_k(scaled, kk))  # sorted, largest first
    top_w = jnp.exp(top_vals - top_vals[:, :1])  # unnormalised probabilities of the kk largest
    keep = jnp.ones((rows, kk), bool)
    if mode.top_k:
        # ties with the k-th value are kept, as in Hugging Face's TopKLogitsWarper
        kth = top_vals[:, jnp.clip(top_k - 1, 0, kk - 1)]
        keep = top_vals >= kth[:, None]
        mass = jnp.sum(jnp.where(keep, top_w, 0.0), axis=-1)
    else:
        mass = jnp.sum(jnp.exp(scaled - top_vals[:, :1]), axis=-1)
    if mode.top_p:
        # Hugging Face's TopPLogitsWarper keeps a token while the mass of the larger ones is below top_p
        before = jnp.cumsum(jnp.where(keep, top_w, 0.0), axis=-1) - top_w
        keep = keep & (before < top_p * mass[:, None])
    # The kept set lies inside the top kk exactly when its last entry is dropped.
    fits = ~keep[:, -1]
    if mode.top_k:
        fits = fits & (top_k < kk)  # else the top-p mass above was taken over too few tokens

    def fast():
        choice = _inverse_cdf(jnp.where(keep, top_w, 0.0), u)
        return jnp.take_along_axis(top_idx, choice[:, None], 1)[:, 0]

    return jax.lax.cond(jnp.all(fits), fast, fallback)


# ------------------------------------------------------------------------------------------ kernels


class _Values(NamedTuple):
    """Traced sampling values: changing them does not recompile."""
    temperature: jax.Array  # f32 scalar (unused when greedy)
    top_k: jax.Array  # i32 scalar
    top_p: jax.Array  # f32 scalar
    stop_at_eos: jax.Array  # bool scalar


class _State(NamedTuple):
    caches: tuple  # per layer (k, v), each [rows, kv_heads, slots, head_dim]
    tokens: jax.Array  # [rows, new_bucket] int32, generated tokens (pad after a row ends)
    logprobs: jax.Array  # [rows, new_bucket] f32
    done: jax.Array  # [rows] bool
    length: jax.Array  # [rows] int32, tokens generated (EOS included)
    step: jax.Array  # i32 scalar, tokens generated so far by the batch
    prompt_lens: jax.Array  # [rows] int32
    keys: jax.Array  # [rows] typed PRNG keys


def _uniforms(keys, step):
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step), (), jnp.float32))(keys)


def _record(state: _State, logits, values: _Values, mode: _Mode, eos_ids, pad_id) -> _State:
    """Samples token `state.step` of every live row and writes it into the output buffers."""
    rows = logits.shape[0]
    tok, logprob = sample_tokens(logits, _uniforms(state.keys, state.step), mode,
                                 values.temperature, values.top_k, values.top_p,
                                 nucleus_k=_NUCLEUS_K if rows <= _NUCLEUS_MAX_ROWS else None)
    live = ~state.done
    t = state.step
    tokens = jax.lax.dynamic_update_index_in_dim(state.tokens, jnp.where(live, tok, pad_id), t, axis=1)
    logprobs = jax.lax.dynamic_update_index_in_dim(state.logprobs, jnp.where(live, logprob, 0.0), t, axis=1)
    is_eos = jnp.isin(tok, jnp.asarray(eos_ids, jnp.int32)) & values.stop_at_eos
    return state._replace(tokens=tokens, logprobs=logprobs, done=state.done | is_eos,
                          length=jnp.where(live, t + 1, state.length), step=t + 1)


def _final_logits(params, x, config):
    h = llama.rms_norm(x[:, -1:], params["final_norm"], config.rms_norm_eps)
    return llama.unembed(params, h, config)[:, 0]


def _prefill(params, prompts, prompt_lens, row_prompt, row_live, row_seeds, values, *, config, mode,
             new_bucket, cache_dtype, eos_ids, pad_id, counter):
    """Runs the distinct prompts once, gathers each prompt's cache into its sample rows, samples token 0.

    prompts [U, P] left-padded; prompt_lens [U]; row_prompt [R] index into U; row_live [R] (False = batch
    padding); row_seeds [R, 3] uint32 (seed, prompt hash, sample index).
    """
    counter["prefill"] += 1  # runs at trace time only: counts compilations
    u, p = prompts.shape
    segment = (jnp.arange(p)[None, :] >= p - prompt_lens[:, None]).astype(jnp.int32)
    positions = llama.segment_positions(segment)
    mask = llama.causal_mask(segment)
    inv_freq = jnp.asarray(llama.rope_inv_freq(config))
    x = llama.embed(params, prompts, config)
    kv = []

    def keep(k, v):
        kv.append((k, v))
        return k, v

    for lp in params["layers"]:
        x = llama.layer(lp, x, positions, mask, config, inv_freq, kv_update=keep)

    def to_cache(a):  # [U, P, K, Dh] -> [R, K, P + new_bucket, Dh]
        a = jnp.swapaxes(a, 1, 2)[row_prompt].astype(cache_dtype)
        return jnp.pad(a, ((0, 0), (0, 0), (0, new_bucket), (0, 0)))

    rows = row_prompt.shape[0]
    keys = jax.vmap(lambda s: functools.reduce(jax.random.fold_in, s[1:], jax.random.key(s[0])))(row_seeds)
    state = _State(
        caches=tuple((to_cache(k), to_cache(v)) for k, v in kv),
        tokens=jnp.full((rows, new_bucket), pad_id, jnp.int32),
        logprobs=jnp.zeros((rows, new_bucket), jnp.float32),
        done=~row_live,
        length=jnp.zeros((rows,), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        prompt_lens=prompt_lens[row_prompt],
        keys=keys,
    )
    logits = _final_logits(params, x, config)[row_prompt]
    return _record(state, logits, values, mode, eos_ids, pad_id)


def _decode(params, state: _State, limit, values, *, config, mode, prompt_bucket, eos_ids, pad_id, counter):
    """Generates until `limit` tokens or until every row has ended, all inside one while_loop."""
    counter["decode"] += 1
    inv_freq = jnp.asarray(llama.rope_inv_freq(config))
    slots = jnp.arange(state.caches[0][0].shape[2])

    def step(s: _State) -> _State:
        t = s.step
        last = jax.lax.dynamic_index_in_dim(s.tokens, t - 1, axis=1, keepdims=False)
        slot = prompt_bucket + t - 1  # left padding puts every row's next token in the same slot
        positions = (s.prompt_lens + t - 1)[:, None]
        mask = ((slots[None, :] >= prompt_bucket - s.prompt_lens[:, None]) & (slots[None, :] <= slot))[:, None, :]
        x = llama.embed(params, last[:, None], config)
        caches = []
        for lp, (kc, vc) in zip(params["layers"], s.caches):
            def splice(k, v, kc=kc, vc=vc):
                kc = jax.lax.dynamic_update_slice_in_dim(kc, jnp.swapaxes(k, 1, 2).astype(kc.dtype), slot, axis=2)
                vc = jax.lax.dynamic_update_slice_in_dim(vc, jnp.swapaxes(v, 1, 2).astype(vc.dtype), slot, axis=2)
                caches.append((kc, vc))
                return kc, vc

            x = llama.layer(lp, x, positions, mask, config, inv_freq, kv_update=splice,
                            attend=llama.attention_cached)
        s = s._replace(caches=tuple(caches))
        return _record(s, _final_logits(params, x, config), values, mode, eos_ids, pad_id)

    def more(s: _State):
        return (s.step < limit) & ~jnp.all(s.done)

    return jax.lax.while_loop(more, step, state)


def _score(params, prompts, prompt_lens, candidates, *, config, counter):
    counter["score"] += 1
    p = prompts.shape[1]
    real = (jnp.arange(p)[None, :] >= p - prompt_lens[:, None]).astype(jnp.int32)
    hidden = llama.forward(params, prompts, config, attention_mask=real, logits=False, return_hidden=True).hidden
    logits = llama.unembed(params, hidden[:, -1:], config)[:, 0]
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
        self.params = llama.unstack_layers(model.params)
        cfg = self.config
        self.eos_ids = tuple(int(e) for e in cfg.eos_token_ids)
        self.pad_id = int(cfg.pad_token_id if cfg.pad_token_id is not None else (self.eos_ids or (0,))[0])
        self.compilations: collections.Counter = collections.Counter()  # traces per kernel, for tests
        self.stats: collections.Counter = collections.Counter()  # prompts prefilled, rows decoded
        statics = dict(config=cfg, eos_ids=self.eos_ids, pad_id=self.pad_id, counter=self.compilations)
        self._prefill = jax.jit(functools.partial(_prefill, **statics),
                                static_argnames=("mode", "new_bucket", "cache_dtype"))
        self._decode = jax.jit(functools.partial(_decode, **statics), static_argnames=("mode", "prompt_bucket"),
                               donate_argnames=("state",))
        self._score = jax.jit(functools.partial(_score, config=cfg, counter=self.compilations))

    # -------------------------------------------------------------------------------- memory

    def cache_bytes(self, rows: int, prompt_len: int, max_new_tokens: int) -> int:
        """Bytes of the KV cache for a batch of `rows` sequences (shapes rounded up to their buckets)."""
        c = self.config
        slots = length_bucket(prompt_len) + length_bucket(max_new_tokens)
        rows = batch_bucket(rows, self.max_batch)
        return 2 * c.num_layers * rows * c.num_kv_heads * slots * c.head_dim * self.cache_dtype.itemsize

    def describe_cache(self, rows: int, prompt_len: int, max_new_tokens: int) -> str:
        c = self.config
        slots = length_bucket(prompt_len) + length_bucket(max_new_tokens)
        return (f"KV cache: 2 x {c.num_layers} layers x {batch_bucket(rows, self.max_batch)} rows x "
                f"{c.num_kv_heads} kv heads x {slots} slots x {c.head_dim} x {self.cache_dtype.name} = "
                f"{self.cache_bytes(rows, prompt_len, max_new_tokens) / 2**20:.1f} MiB")

    # ------------------------------------------------------------------------------ sampling

    def generate(self, prompts: list[list[int]], sp: SamplingParams, *, progress: bool = False
                 ) -> list[list[Completion]]:
        """result[i][j] is sample j of prompt i. Prompts are sorted by length and batched; a prompt's
        samples share its prefill (a prompt whose n exceeds max_batch is prefilled once per batch)."""
        out: list[list[Completion | None]] = [[None] * sp.n for _ in prompts]
        batches = self._plan(prompts, sp)
        bar = _progress(sum(map(len, batches)), "sampling", "seq") if progress else None
        for batch in batches:
            for (i, j), completion in zip(batch, self._generate_batch(prompts, batch, sp)):
                out[i][j] = completion
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return out  # type: ignore[return-value]

    def warmup(self, prompts: list[list[int]], sp: SamplingParams) -> None:
        """Compiles every kernel that `generate(prompts, sp)` will use (one decode step per batch shape),
        so that a timed run measures sampling, not compilation."""
        seen = set()
        for batch in self._plan(prompts, sp):
            arrays, batch = self._batch_inputs(prompts, batch, sp)
            shapes = tuple(np.shape(a) for a in arrays)
            if shapes not in seen:
                seen.add(shapes)
                self._run_kernels(arrays, batch, sp, limit=1)

    def _plan(self, prompts, sp: SamplingParams) -> list[list[tuple[int, int]]]:
        """Rows (prompt, sample) sorted by prompt length, cut into batches of at most max_batch rows."""
        self._check_prompts(prompts, sp.max_new_tokens)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        rows = [(i, j) for i in order for j in range(sp.n)]
        return [rows[k:k + self.max_batch] for k in range(0, len(rows), self.max_batch)]

    def _batch_inputs(self, prompts, batch, sp: SamplingParams):
        unique = list(dict.fromkeys(i for i, _ in batch))
        slot_of = {i: u for u, i in enumerate(unique)}
        prompt_bucket = length_bucket(max(len(prompts[i]) for i in unique))
        n_rows = batch_bucket(len(batch), self.max_batch)
        tokens, lens = _left_pad([prompts[i] for i in unique], prompt_bucket,
                                 batch_bucket(len(unique), self.max_batch), self.pad_id)
        row_prompt = np.zeros((n_rows,), np.int32)
        row_live = np.zeros((n_rows,), bool)
        row_seeds = np.zeros((n_rows, 3), np.uint32)
        for r, (i, j) in enumerate(batch):
            row_prompt[r], row_live[r] = slot_of[i], True
            row_seeds[r] = (sp.seed & 0xFFFFFFFF, _prompt_hash(prompts[i]), j)
        return (tokens, lens, row_prompt, row_live, row_seeds), batch

    def _run_kernels(self, arrays, batch, sp: SamplingParams, *, limit: int | None = None, stop=None) -> _State:
        """Prefill, then decode to `limit` tokens (default max_new_tokens), calling `stop(state) -> done`
        every few tokens when given."""
        values = _Values(jnp.float32(sp.temperature or 1.0), jnp.int32(sp.top_k), jnp.float32(sp.top_p),
                         jnp.bool_(not sp.ignore_eos))
        mode = _mode(sp)
        self.stats["prefill_prompts"] += len(dict.fromkeys(i for i, _ in batch))
        self.stats["rows"] += len(batch)
        limit = sp.max_new_tokens if limit is None else limit
        state = self._prefill(self.params, *arrays, values, mode=mode, new_bucket=length_bucket(sp.max_new_tokens),
                              cache_dtype=self.cache_dtype.name)
        decode = functools.partial(self._decode, self.params, values=values, mode=mode,
                                   prompt_bucket=arrays[0].shape[1])
        if stop is None:
            return decode(state, limit=jnp.int32(limit))
        chunk = 16  # stop strings are text: check the decoded text between chunks of compiled steps
        while True:
            state = decode(state, limit=jnp.int32(min(int(state.step) + chunk, limit)))
            done = stop(state)
            if int(state.step) >= limit or done.all():
                return state
            state = state._replace(done=jnp.asarray(done))

    def _generate_batch(self, prompts, batch, sp: SamplingParams) -> list[Completion]:
        arrays, batch = self._batch_inputs(prompts, batch, sp)
        stopped: dict[int, tuple[int, int]] = {}

        def stop(state):
            toks, length, done = jax.device_get((state.tokens, state.length, state.done))
            done = np.array(done)  # writable copy
            for r in range(len(batch)):
                if r not in stopped and not done[r]:
                    hit = self._find_stop(toks[r, :length[r]], sp.stop_strings)
                    if hit is not None:
                        stopped[r] = hit
                        done[r] = True
            return done

        state = self._run_kernels(arrays, batch, sp, stop=stop if sp.stop_strings else None)
        return self._completions(state, batch, sp, stopped)

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

    def _completions(self, state: _State, batch, sp: SamplingParams, stopped) -> list[Completion]:
        toks, logprobs, length = jax.device_get((state.tokens, state.logprobs, state.length))
        out = []
        for r in range(len(batch)):
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
