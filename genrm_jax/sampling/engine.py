"""The Engine: batching, shape buckets, seeds, stop strings and completions around the compiled kernels.

Prompts are sorted by length and left-padded to a shape bucket, so another prompt length inside the bucket
reuses the compiled kernels. The tokens that every prompt of a call starts with (a judge's instructions: half to
two thirds of its prompts) run through the model once per call, not once per prompt (`_shared_prefix`). Per-row
PRNG keys come from (seed, prompt content, sample index), so a sample does not depend on which other prompts
share its batch, nor on the batch size. Under a mesh (`Engine(mesh=...)`) the params are sharded by their
logical axes (`sharding.py`), the KV cache by batch (data x fsdp) and KV heads (model), and every batch is
padded to a multiple of the data x fsdp size.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import zlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from genrm_jax import sharding
from genrm_jax.models import feature_major, llama
from genrm_jax.sampling import continuation, kernels
from genrm_jax.sampling.tokens import SamplingParams, mode_of


@dataclasses.dataclass
class Completion:
    token_ids: list[int]
    text: str
    logprobs: list[float]  # log-probability of each token under the model (log-softmax of the raw logits)
    finish_reason: str  # "eos" | "stop" | "length"
    # with `generate(..., then=Continuation)`: log-probabilities [len(candidates)] (over the full vocabulary) of
    # the candidates as the next token after the prompt and the continuation's tokens
    continuation: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Continuation:
    """What `generate(..., then=...)` scores once a row has finished: the log-probabilities of `candidates` as the
    next token after the prompt followed by `tokens(completion)` (non-empty). Those tokens usually begin with the
    row's own generated tokens (a forced verdict re-encodes the rationale's text, then appends its prefix): the
    longest prefix they share is read from the row's KV cache, and only the rest runs through the model. The
    result equals `score_next_token(prompt + tokens(completion), candidates)` (one more prefill) up to float
    rounding."""
    tokens: Callable[[Completion], Sequence[int]]
    candidates: tuple[int, ...]


def length_bucket(n: int, minimum: int = 16) -> int:
    """Rounds a length up to one of four sizes per octave (16, 20, 24, 28, 32, 40, ...): at most 25% padding,
    few enough shapes that compiled kernels get reused."""
    if n <= minimum:
        return minimum
    step = 2 ** max(0, (n - 1).bit_length() - 3)
    return -(-n // step) * step


def prefix_bucket(n: int, minimum: int = 32) -> int:
    """Rounds a shared prefix's length *down* to one of four sizes per octave (32, 40, 48, 56, 64, 80, ...), 0
    below `minimum`: the prompts of one template share one size whatever else their prompts have in common, so
    their calls reuse the compiled kernels."""
    if n < minimum:
        return 0
    step = 2 ** max(0, n.bit_length() - 3)
    return n // step * step


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
    """Batched sampling and next-token scoring for one model (see the module docstrings for the design).

    `mesh` (from `sharding.make_mesh(data, fsdp, model)`): params placed with `sharding.shardings` of their
    logical axes, the KV cache split by batch over data x fsdp and by KV heads over model, the kernels compiled
    with those in/out shardings. It needs `LlamaConfig.kernels="xla"` (the "cpu" kernels' transposed weights are
    a single-device layout), and the sharded sizes divisible by their mesh axes.
    """

    def __init__(self, model, *, cache_dtype: str = "float32", max_batch: int = 32, mesh=None,
                 share_prefix: bool = True):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: expected >= 1")
        self.config: llama.LlamaConfig = model.config
        self.kernels = llama.resolve_kernels(self.config)  # decided once, here
        if mesh is not None and self.kernels == "cpu":
            raise ValueError("Engine(mesh=...) needs LlamaConfig.kernels='xla' (or 'auto' on an accelerator): the "
                             "'cpu' kernels' feature-major weights are a single-device layout")
        self.mesh = mesh
        self.tokenizer = model.tokenizer
        self.cache_dtype = jnp.dtype(cache_dtype)
        self.max_batch = max_batch
        self.share_prefix = share_prefix and mesh is None  # under a mesh one prefix row is not split by batch
        self.params = self._prepare(model.params)
        cfg = self.config
        self.eos_ids = tuple(int(e) for e in cfg.eos_token_ids)
        self.pad_id = int(cfg.pad_token_id if cfg.pad_token_id is not None else (self.eos_ids or (0,))[0])
        self.compilations: collections.Counter = collections.Counter()  # traces per kernel, for tests
        self.stats: collections.Counter = collections.Counter()  # prompts prefilled, rows decoded
        placed = self._kernel_shardings() if mesh is not None else {}
        self._rows, self._whole = placed.get("rows"), placed.get("whole")
        statics = dict(config=cfg, kernels=self.kernels, residual=placed.get("rows"), counter=self.compilations)
        tokens = dict(eos_ids=self.eos_ids, pad_id=self.pad_id)
        # Arguments are positional, the static ones too: jit takes no keyword arguments with in_shardings.
        self._prefill = jax.jit(functools.partial(kernels.prefill, **statics, **tokens), static_argnums=(7, 8, 9, 10),
                                **placed.get("prefill", {}))
        self._decode = jax.jit(functools.partial(kernels.decode, **statics, **tokens), static_argnums=(4,),
                               donate_argnums=(1,), **placed.get("decode", {}))
        self._score = jax.jit(functools.partial(kernels.score, **statics), **placed.get("score", {}))
        self._prefix = jax.jit(functools.partial(kernels.prefix_pass, config=cfg, kernels=self.kernels,
                                                 counter=self.compilations))
        self._continue = jax.jit(functools.partial(continuation.score, **statics), **placed.get("continue", {}))

    def _prepare(self, params):
        """The model's params in the kernels' layout: for "cpu" a transposed per-layer copy
        (`feature_major.prepare`); for "xla" the params themselves (layers as `config.scan_layers` says), placed on
        the mesh when there is one."""
        if self.kernels == "cpu":
            return feature_major.prepare(params, self.config)
        params = llama.arrange_layers(params, self.config)
        if self.mesh is not None:
            params = jax.device_put(params, sharding.shardings(llama.logical_axes(self.config), self.mesh))
        return params

    def _kernel_shardings(self) -> dict:
        """jit in/out shardings of the three kernels under `self.mesh`, and "rows": a batch split by its
        leading axis (a prefix that fits arrays of any rank)."""
        mesh = self.mesh

        def named(*axes):
            return NamedSharding(mesh, sharding.logical_to_spec(axes, mesh=mesh))

        rows, whole = named("batch"), NamedSharding(mesh, P())
        layers = self.params["layers"]
        if isinstance(layers, (list, tuple)):
            kv = tuple((named(*kernels.CACHE_AXES),) * 2 for _ in layers)
        else:
            kv = (named("layers", *kernels.CACHE_AXES),) * 2
        state = kernels.State(prompt_kv=kv, new_kv=kv, tokens=rows, logprobs=rows, done=rows, length=rows,
                              step=whole, prompt_lens=rows, keys=rows)
        params = sharding.shardings(llama.logical_axes(self.config), mesh)
        return {"rows": rows, "whole": whole,
                # the second argument, the shared prefix's K/V, is None under a mesh (`_shared_prefix`)
                "prefill": dict(in_shardings=(params, whole, rows, rows, rows, rows, whole), out_shardings=state),
                "decode": dict(in_shardings=(params, state, whole, whole), out_shardings=state),
                "score": dict(in_shardings=(params, whole, rows, rows, whole), out_shardings=rows),
                "continue": dict(in_shardings=(params, kv, kv, rows, rows, rows, rows, whole), out_shardings=rows)}

    def _multiprocess(self) -> bool:
        return self.mesh is not None and jax.process_count() > 1

    def _put(self, x, placement):
        """Host values (a pytree) as arrays placed as the kernels take them. Under a mesh that spans processes
        each process builds its own shards from its copy (every process plans the same batches from the same
        prompts); elsewhere jit places them itself."""
        if not self._multiprocess():
            return x
        return jax.tree.map(lambda a: jax.make_array_from_callback(
            np.shape(a), placement, lambda idx, a=np.asarray(a): a[idx]), x)

    def _get(self, *xs):
        """Device values on the host; under a mesh that spans processes, gathered from all of them."""
        if not self._multiprocess():
            return jax.device_get(xs)
        from jax.experimental import multihost_utils

        return tuple(np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in xs)

    def _batch_rows(self, n: int) -> int:
        """n rounded up to a multiple of the batch's shard count under the mesh (1 without one)."""
        if self.mesh is None:
            return n
        spec = sharding.logical_to_spec(("batch",), mesh=self.mesh)[0]
        names = spec if isinstance(spec, tuple) else (() if spec is None else (spec,))
        d = int(np.prod([self.mesh.shape[a] for a in names]))
        return -(-n // d) * d

    def set_params(self, params) -> None:
        """Samples from new weights (e.g. after a training iteration) with the kernels already compiled: the
        params are an argument of every jitted kernel, so only a change of shape or dtype would retrace."""
        new = self._prepare(params)
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
        return per_batch, self._batch_rows(batch_bucket(min(prompts, per_batch), per_batch)), m

    # ------------------------------------------------------------------------------ sampling

    def generate(self, prompts: list[list[int]], sp: SamplingParams, *, progress: bool = False,
                 on_prompt=None, then: Continuation | None = None) -> list[list[Completion]]:
        """result[i][j] is sample j of prompt i. Prompts are sorted by length and batched, whole prompts
        per batch, so that a prompt's samples share its prefill and its prompt cache (a prompt whose n exceeds
        max_batch is prefilled once per batch).

        `on_prompt(i, completions)` is called as soon as all n samples of prompt i exist (after the batch
        that finishes them), so a caller can write results while later batches still run.
        `then`: score a continuation of every row from its KV cache when its batch ends (see `Continuation`);
        each completion's `continuation` holds the result.
        """
        out: list[list[Completion | None]] = [[None] * sp.n for _ in prompts]
        missing = [sp.n] * len(prompts)
        batches = self._plan(prompts, sp)
        prefix = self._prefix_of(prompts)
        bar = _progress(len(prompts) * sp.n, "sampling", "seq") if progress else None
        for batch in batches:
            done = self._generate_batch(prompts, batch, sp, then, prefix)
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
        p0, prefix_kv = self._prefix_of(prompts)
        for batch in self._plan(prompts, sp):
            arrays, _ = self._batch_inputs(prompts, batch, sp, p0)
            shapes = tuple(np.shape(a) for a in arrays)
            if shapes not in seen:
                seen.add(shapes)
                # one decode step runs the loop body
                self._run_kernels(arrays, sp, prefix_kv=prefix_kv, limit=min(2, sp.max_new_tokens))

    def _plan(self, prompts, sp: SamplingParams) -> list[tuple[list[int], int, int]]:
        """Batches of (prompt indices, first sample, end sample): whole prompts sorted by length, as many
        per batch as max_batch rows allow; a prompt with n > max_batch gets batches of its own."""
        self._check_prompts(prompts, sp.max_new_tokens)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        per_batch, _, m = self._batch_shape(len(prompts), sp.n)
        return [(order[k:k + per_batch], j, min(j + m, sp.n))
                for k in range(0, len(order), per_batch) for j in range(0, sp.n, m)]

    def _shared_prefix(self, prompts) -> int:
        """How many leading tokens the prompts of a call all share, run once per call: their common prefix
        rounded down by `prefix_bucket`, leaving every prompt at least one token of its own (its last position
        gives the next-token logits). 0 under a mesh, with `share_prefix=False`, or for fewer than three distinct
        prompts: a prompt's n samples share its prefill anyway, and the two orders of one pair (a judge server's
        lone request) share their question too, a prefix of a new length for each request, each its own
        compilation, for the saving of one prompt's instructions."""
        if not self.share_prefix or len({tuple(p) for p in prompts}) < 3:
            return 0
        common = min(len(p) for p in prompts) - 1
        for p in prompts[1:]:
            common = _common_prefix(prompts[0][:common], p)
        return prefix_bucket(common)

    def _prefix_of(self, prompts) -> tuple[int, tuple | None]:
        """(P0, the K/V of the prefix that the prompts of a call share, or None), read by each of its batches."""
        p0 = self._shared_prefix(prompts)
        if not p0:
            return 0, None
        self.stats["prefill_tokens"] += p0
        self.stats["shared_prefix_tokens"] -= p0  # the prompts' prefills count what they spare (`_run_kernels`)
        return p0, self._prefix(self.params, np.asarray(prompts[0][:p0], np.int32)[None])

    def _rest(self, prompts, idx, p0: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """prompts[idx] without their shared prefix of p0 tokens, left-padded to a bucket: ([rows, width], lengths
        [rows])."""
        rest = [prompts[i][p0:] for i in idx]
        return _left_pad(rest, length_bucket(max(len(r) for r in rest)), rows, self.pad_id)

    def _batch_inputs(self, prompts, batch, sp: SamplingParams, p0: int = 0):
        """Arrays for `kernels.prefill` (the prompts after their shared prefix of p0 tokens) and, per row, its
        (prompt, sample) or None for batch padding."""
        idx, j0, j1 = batch
        _, u, m = self._batch_shape(len(idx), j1 - j0)
        tokens, lens = self._rest(prompts, idx, p0, u)
        rows: list[tuple[int, int] | None] = [None] * (u * m)
        row_seeds = np.zeros((u * m, 3), np.uint32)
        for a, i in enumerate(idx):
            for j in range(j0, j1):
                r = a * m + j - j0
                rows[r] = (i, j)
                row_seeds[r] = (sp.seed & 0xFFFFFFFF, _prompt_hash(prompts[i]), j)
        row_live = np.array([r is not None for r in rows])
        return (tokens, lens, row_live, row_seeds), rows

    def _run_kernels(self, arrays, sp: SamplingParams, *, prefix_kv=None, limit: int | None = None, stop=None
                     ) -> kernels.State:
        """Prefill (after the shared prefix whose K/V `prefix_kv` holds, if any), then decode to `limit` tokens
        (default max_new_tokens), calling `stop(state) -> done` every few tokens when given."""
        values = self._put(kernels.Values(jnp.float32(sp.temperature or 1.0), jnp.int32(sp.top_k),
                                          jnp.float32(sp.top_p), jnp.bool_(not sp.ignore_eos)), self._whole)
        mode = mode_of(sp)
        tokens, lens, row_live, row_seeds = arrays
        prompt_live = row_live.reshape(len(lens), -1).any(axis=1)
        live = int(np.sum(prompt_live))
        self.stats["prefill_prompts"] += live
        self.stats["prefill_tokens"] += int(np.sum(lens[prompt_live]))  # tokens run (the shared prefix: once a call)
        if prefix_kv is not None:  # ... and those a prefill of each whole prompt would have run as well
            self.stats["shared_prefix_tokens"] += live * jax.tree.leaves(prefix_kv)[0].shape[-3]
        self.stats["rows"] += int(row_live.sum())
        limit = sp.max_new_tokens if limit is None else limit
        state = self._prefill(self.params, prefix_kv, *self._put(arrays, self._rows), values, mode,
                              len(row_live) // len(lens), length_bucket(sp.max_new_tokens), self.cache_dtype.name)

        def decode(state, limit):
            return self._decode(self.params, state, self._put(jnp.int32(limit), self._whole), values, mode)

        if stop is None:
            return decode(state, limit)
        chunk = 16  # stop strings are text: check the decoded text between chunks of compiled steps
        while True:
            state = decode(state, min(int(self._get(state.step)[0]) + chunk, limit))
            done = stop(state)
            if int(self._get(state.step)[0]) >= limit or done.all():
                return state
            state = state._replace(done=self._put(jnp.asarray(done), self._rows))

    def _generate_batch(self, prompts, batch, sp: SamplingParams, then: Continuation | None = None,
                        prefix: tuple[int, tuple | None] = (0, None)) -> list[tuple[tuple[int, int], Completion]]:
        p0, prefix_kv = prefix
        arrays, rows = self._batch_inputs(prompts, batch, sp, p0)
        live = [r for r, row in enumerate(rows) if row is not None]
        stopped: dict[int, tuple[int, int]] = {}

        def stop(state):
            toks, length, done = self._get(state.tokens, state.length, state.done)
            done = np.array(done)  # writable copy
            for r in live:
                if r not in stopped and not done[r]:
                    hit = self._find_stop(toks[r, :length[r]], sp.stop_strings)
                    if hit is not None:
                        stopped[r] = hit
                        done[r] = True
            return done

        state = self._run_kernels(arrays, sp, prefix_kv=prefix_kv, stop=stop if sp.stop_strings else None)
        completions = self._completions(state, live, sp, stopped)
        self.stats["generated_tokens"] += sum(len(c.token_ids) for c in completions)
        if then is not None:
            for c, logprobs in zip(completions, self._score_continuations(state, live, completions, then)):
                c.continuation = logprobs
        return list(zip([rows[r] for r in live], completions))

    def _score_continuations(self, state: kernels.State, live: list[int], completions: list[Completion],
                             then: Continuation) -> np.ndarray:
        """[len(live), len(candidates)]: `then` scored for the live rows of a finished batch (see `Continuation`).

        Generated token i of a row has its K/V in cache slot i once the decode loop has fed it, i.e. for
        i < step - 1 (the last sampled token is never fed); a row that ended early kept running on pad tokens
        after its end, so only the part of the continuation equal to its own tokens is reused."""
        bad = [c for c in then.candidates if not 0 <= c < self.config.vocab_size]
        if not then.candidates or bad:
            raise ValueError(f"Continuation.candidates {list(then.candidates)}: expected token ids in "
                             f"[0, {self.config.vocab_size})")
        toks, step = self._get(state.tokens, state.step)
        fed = int(np.asarray(step).reshape(-1)[0]) - 1
        rows = toks.shape[0]
        tails, reuse = [[self.pad_id]] * rows, np.zeros(rows, np.int32)
        for r, c in zip(live, completions):
            ids = [int(t) for t in then.tokens(c)]
            if not ids:
                raise ValueError("Continuation.tokens returned no tokens: there is no position to score")
            k = _common_prefix(ids, toks[r, :fed])
            k = min(k, len(ids) - 1)  # at least one token runs: its output is the next-token distribution
            tails[r], reuse[r] = ids[k:], k
        width = max(8, 1 << (max(len(t) for t in tails) - 1).bit_length())  # few chunk shapes, few compilations
        chunk = np.full((rows, width), self.pad_id, np.int32)
        lens = np.array([len(t) for t in tails], np.int32)
        for r, t in enumerate(tails):
            chunk[r, width - len(t):] = t
        self.stats["continuation_tokens"] += int(sum(lens[r] for r in live))
        self.stats["continuation_reused"] += int(sum(reuse[r] for r in live))
        cand = self._put(jnp.asarray(then.candidates, jnp.int32), self._whole)
        (scores,) = self._get(self._continue(self.params, state.prompt_kv, state.new_kv, state.prompt_lens,
                                             *self._put((chunk, lens, reuse), self._rows), cand))
        return np.asarray(scores)[live]

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

    def _completions(self, state: kernels.State, live: list[int], sp: SamplingParams, stopped) -> list[Completion]:
        toks, logprobs, length = self._get(state.tokens, state.logprobs, state.length)
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
        cand = self._put(jnp.asarray(candidates, jnp.int32), self._whole)
        out = np.zeros((len(prompts), len(candidates)), np.float32)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        p0, prefix_kv = self._prefix_of(prompts)
        for k in range(0, len(order), self.max_batch):
            idx = order[k:k + self.max_batch]
            tokens, lens = self._rest(prompts, idx, p0, self._batch_rows(batch_bucket(len(idx), self.max_batch)))
            (scores,) = self._get(self._score(self.params, prefix_kv, *self._put((tokens, lens), self._rows), cand))
            self.stats["score_tokens"] += sum(len(prompts[i]) - p0 for i in idx)
            self.stats["shared_prefix_tokens"] += p0 * len(idx)
            out[idx] = np.asarray(scores)[:len(idx)]
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


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _progress(total, desc, unit):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
