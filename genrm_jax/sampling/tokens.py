"""Sampling requests and the token maths: greedy, temperature, top-k and top-p, per row, without a sort.

Sorting the 49,152-token vocabulary every step is what makes naive top-p slow. The top-k / top-p threshold is
found by bisection over float bit patterns instead (one fused reduction per step, no sort), and the token by a
two-level inverse CDF. Every row's token is a function of that row's logits and its own uniform alone: no
batch-wide choice of code path (an earlier top-k fast path for small batches, chosen by one `lax.cond` for the
whole batch, turned the same uniform into different tokens depending on the batch's other rows).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

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


class Mode(NamedTuple):
    """Static sampling switches (a compiled kernel each); the values themselves are traced."""
    greedy: bool
    top_k: bool
    top_p: bool


def mode_of(sp: SamplingParams) -> Mode:
    return Mode(sp.greedy, sp.top_k > 0, sp.top_p < 1.0)


def _bisect(lo, hi, ok, iters):
    """Largest x in [lo, hi) with ok(x), per row; ok must hold at lo and be monotone decreasing."""
    def body(_, c):
        lo, hi = c
        mid = lo + (hi - lo) // 2
        good = ok(mid)
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

    return jax.lax.fori_loop(0, iters, body, (lo, hi))[0]


def exact_threshold(probs, top_k, top_p, iters: int = _THRESHOLD_ITERS):
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


def inverse_cdf(weights, u):
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


def sample_tokens(logits, u, mode: Mode, temperature, top_k, top_p):
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
            t = exact_threshold(probs, top_k if mode.top_k else None, top_p if mode.top_p else None)
            probs = jnp.where(probs >= jax.lax.bitcast_convert_type(t, jnp.float32)[:, None], probs, 0.0)
        tok = inverse_cdf(probs, u)
    logprob = jnp.take_along_axis(logits, tok[:, None], 1)[:, 0] - lse
    return tok, logprob

