"""Sampling engine: exactness against the full forward pass and Hugging Face, sampling statistics,
compilation reuse, seeds, shared prefill, stop strings, and the resumable batch runner."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from experiment_runs import environment
from genrm_jax import generate, sampling
from genrm_jax.io import Model
from genrm_jax.models import llama


class BracketTokenizer:
    """Token i decodes to "[i]": text positions map back to tokens unambiguously."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f"[{int(i)}]" for i in ids)


@pytest.fixture(scope="module")
def tiny_model():
    cfg = tiny_config()
    return Model(cfg, llama.init(jax.random.PRNGKey(0), cfg), BracketTokenizer(), "")


@pytest.fixture(scope="module")
def engine(tiny_model):
    return sampling.Engine(tiny_model, max_batch=8)


# The sampler's two kernel sets, both run here on CPU: "cpu" (feature-major layout over a transposed copy of the
# weights, unrolled layers) and "xla" (what accelerators run: the weights as stored, stacked layers under scan).
KERNELS = ["cpu", "xla"]


def with_kernels(model, kernels):
    return Model(model.config.replace(kernels=kernels), model.params, model.tokenizer, model.path)


PROMPTS = [[1, 5, 7, 9, 11], [1, 3], [1, 20, 30, 40, 50, 60, 70, 80, 90]]


_WIDTH = 64  # reference sequences are right-padded to one width: one compilation for all of them


@jax.jit
def _reference_logprobs(params, ids):
    return jax.nn.log_softmax(llama.forward(params, ids, tiny_config()).logits, -1)


def full_logprobs(model, prompt, generated):
    """log-softmax of the full forward pass at each position that predicted a generated token."""
    ids = list(prompt) + list(generated)
    padded = jnp.asarray([ids + [0] * (_WIDTH - len(ids))])  # causal: right padding changes nothing before it
    return np.asarray(_reference_logprobs(model.params, padded)[0])[len(prompt) - 1:len(ids) - 1]


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("cache_dtype,tol", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_incremental_decode_matches_full_forward(tiny_model, cache_dtype, tol, kernels):
    eng = sampling.Engine(with_kernels(tiny_model, kernels), cache_dtype=cache_dtype, max_batch=8)
    greedy = eng.generate(PROMPTS, sampling.SamplingParams(temperature=0.0, max_new_tokens=20, ignore_eos=True))
    sampled = eng.generate(PROMPTS, sampling.SamplingParams(temperature=1.0, max_new_tokens=20, n=2,
                                                            ignore_eos=True, seed=3))
    for prompt, g, s in zip(PROMPTS, greedy, sampled):
        for c in [g[0], *s]:
            assert len(c.token_ids) == 20 and c.finish_reason == "length"
            ref = full_logprobs(tiny_model, prompt, c.token_ids)
            np.testing.assert_allclose(c.logprobs, ref[np.arange(20), c.token_ids], atol=tol)
        if cache_dtype == "float32":
            assert g[0].token_ids == ref_argmax(tiny_model, prompt, 20)


def ref_argmax(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(full_logprobs(model, ids, [0])[-1])))
    return ids[len(prompt):]


def intended(logits, temperature, top_k, top_p):
    """The truncated distribution as Hugging Face defines it, by sorting (the thing the sampler avoids)."""
    z = logits / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    k = top_k if top_k else len(p)
    keep[order[:k]] = True
    q = np.where(keep, p, 0) / p[keep].sum()
    before = np.cumsum(q[order]) - q[order]
    drop = order[before >= top_p]
    q[drop] = 0
    return q / q.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 0, 0.8), (1.0, 10, 1.0), (1.3, 20, 0.9), (1.0, 0, 0.5)])
def test_sampler_matches_truncated_distribution(temperature, top_k, top_p):
    # 100,000 draws keep the sampling noise of the TV distance near 0.01 for this vocabulary
    draws, vocab = 100_000, 128
    logits = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (vocab,))) * 3.0
    want = intended(logits, temperature, top_k, top_p)
    mode = sampling.Mode(greedy=False, top_k=top_k > 0, top_p=top_p < 1.0)
    u = jax.random.uniform(jax.random.PRNGKey(1), (draws,))
    tok, logprob = jax.jit(lambda l, u: sampling.sample_tokens(
        l, u, mode, jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p)))(
        jnp.broadcast_to(jnp.asarray(logits), (draws, vocab)), u)
    got = np.bincount(np.asarray(tok), minlength=vocab) / draws
    assert got[want == 0].sum() == 0, "drew a token outside the truncated set"
    assert 0.5 * np.abs(got - want).sum() <= 0.02
    lsm = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    np.testing.assert_allclose(np.asarray(logprob), lsm[np.asarray(tok)], atol=1e-5)


def test_same_bucket_does_not_recompile(tiny_model):
    eng = sampling.Engine(tiny_model, max_batch=4)
    sp = sampling.SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12)
    eng.generate([[1, 2, 3, 4, 5]], sp)
    eng.score_next_token([[1, 2, 3, 4, 5]], [3, 4])
    before = dict(eng.compilations)
    assert before == {"prefill": 1, "decode": 1, "score": 1}  # the counter does count compilations
    # another prompt length, seed, temperature and top-p inside the same shape buckets
    eng.generate([[1, 9, 8, 7, 6, 5, 4, 3, 2]], sp.__class__(temperature=0.5, top_p=0.7, max_new_tokens=10, seed=4))
    eng.score_next_token([[1, 9, 8, 7, 6, 5, 4, 3, 2]], [5, 6])
    assert dict(eng.compilations) == before
    eng.generate([[1] * 40], sp)  # a longer bucket does compile
    assert eng.compilations["prefill"] == 2


def samples_alone_and_in_batches(eng, prompts, sp, sizes):
    """Token ids of prompts[0]'s samples when sampled alone and inside batches of the given sizes."""
    alone = [c.token_ids for c in eng.generate(prompts[:1], sp)[0]]
    return alone, {size: [c.token_ids for c in eng.generate(prompts[:size], sp)[0]] for size in sizes}


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (0, 0.95), (50, 1.0), (50, 0.95)])
def test_samples_do_not_depend_on_the_batch(tiny_model, top_k, top_p):
    # 12 prompts x 2 samples = 24 rows: past every small-batch special case a sampler might have
    prompts = [PROMPTS[2]] + [[1] + [(7 * i + j) % 120 + 3 for j in range(3 + i)] for i in range(11)]
    eng = sampling.Engine(tiny_model, max_batch=32)
    sp = sampling.SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, max_new_tokens=16, n=2,
                                 ignore_eos=True, seed=11)
    alone, batched = samples_alone_and_in_batches(eng, prompts, sp, (2, 4, 6, 12))
    assert all(b == alone for b in batched.values()), (alone, batched)


@pytest.mark.parametrize("kernels", KERNELS)
def test_set_params_swaps_weights_without_recompiling(tiny_model, kernels):
    eng = sampling.Engine(with_kernels(tiny_model, kernels), max_batch=4)
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=6, ignore_eos=True)
    before = eng.generate(PROMPTS, sp)
    eng.score_next_token(PROMPTS, [3, 4])
    traces = dict(eng.compilations)
    other = llama.init(jax.random.PRNGKey(1), tiny_model.config)
    eng.set_params(other)
    after = eng.generate(PROMPTS, sp)
    got = eng.score_next_token(PROMPTS, [3, 4])
    assert dict(eng.compilations) == traces  # new weights, the same compiled kernels
    assert [c.token_ids for cs in after for c in cs] != [c.token_ids for cs in before for c in cs]
    for prompt, (c,), row in zip(PROMPTS, after, got):  # and the new weights are really the ones used
        ids = list(prompt) + c.token_ids
        ref = np.asarray(jax.nn.log_softmax(llama.forward(other, jnp.asarray([ids]), tiny_model.config).logits, -1))[0]
        np.testing.assert_allclose(c.logprobs, ref[np.arange(len(prompt) - 1, len(ids) - 1), c.token_ids], atol=1e-4)
        np.testing.assert_allclose(row, ref[len(prompt) - 1, [3, 4]], atol=1e-5)
    with pytest.raises(ValueError, match="set_params"):
        eng.set_params(llama.init(jax.random.PRNGKey(1), tiny_config(num_layers=1)))


def test_xla_kernels_keep_one_copy_of_the_weights_and_scan_the_layers(tiny_model):
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=4)  # greedy: the only loops are ours

    def decode_loops(eng):
        """While loops in the compiled decode kernel (a lax.scan lowers to one), and the decode state."""
        arrays, _ = eng._batch_inputs(PROMPTS, eng._plan(PROMPTS, sp)[0], sp)
        state = eng._run_kernels(arrays, sp)
        values = sampling.kernels.Values(jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0), jnp.bool_(True))
        text = eng._decode.lower(eng.params, state, jnp.int32(4), values, sampling.tokens.mode_of(sp)).as_text()
        return text.count("stablehlo.while"), state

    xla = sampling.Engine(with_kernels(tiny_model, "xla"), max_batch=4)
    assert xla.params is tiny_model.params  # no transposed copy: the sampler reads the model's own arrays
    xla_loops, state = decode_loops(xla)
    # one stacked cache per K and V, [layers, ...], that the scanned layers read and write
    assert [a.shape[0] for a in jax.tree.leaves(state.new_kv)] == [tiny_model.config.num_layers] * 2

    cpu = sampling.Engine(with_kernels(tiny_model, "cpu"), max_batch=4)
    assert isinstance(cpu.params["layers"], list)  # the CPU layout: a per-layer transposed copy, unrolled
    cpu_loops, state = decode_loops(cpu)
    assert len(state.new_kv) == tiny_model.config.num_layers  # a (k, v) pair per layer
    assert xla_loops == cpu_loops + 1  # the same kernel but for the scan over layers


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("n,max_batch,prefills,rows", [
    (4, 8, 3, 12),  # two prompts x four samples in a batch, then the third prompt
    (3, 4, 3, 9),  # n does not divide max_batch: one prompt per batch
    (6, 4, 6, 18),  # n > max_batch: each prompt is split over two batches (4 + 2), prefilled in each
    (1, 4, 3, 3),  # three distinct prompts in a batch of four prompt slots (one slot is padding)
])
def test_samples_share_one_prefill(tiny_model, n, max_batch, prefills, rows, kernels):
    eng = sampling.Engine(with_kernels(tiny_model, kernels), max_batch=max_batch)
    out = eng.generate(PROMPTS[:3], sampling.SamplingParams(max_new_tokens=8, n=n, ignore_eos=True))
    assert eng.stats["prefill_prompts"] == prefills and eng.stats["rows"] == rows
    assert [len(cs) for cs in out] == [n] * 3
    for prompt, cs in zip(PROMPTS, out):  # every row attends to its own prompt's cache
        for c in cs:
            ref = full_logprobs(tiny_model, prompt, c.token_ids)
            np.testing.assert_allclose(c.logprobs, ref[np.arange(8), c.token_ids], atol=1e-4)


def test_eos_and_stop_strings(tiny_model, engine):
    base = engine.generate(PROMPTS, sampling.SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True))
    ids = base[0][0].token_ids
    stop = BracketTokenizer().decode(ids[5:7])
    out = engine.generate(PROMPTS[:1], sampling.SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True,
                                                              stop_strings=("no such text", stop)))[0][0]
    text = base[0][0].text
    cut = text.find(stop)
    assert out.finish_reason == "stop" and out.text == text[:cut]
    keep = next(n for n in range(1, 25) if len(BracketTokenizer().decode(ids[:n])) >= cut + len(stop))
    assert out.token_ids == ids[:keep] and len(out.logprobs) == keep
    # treating a generated token as EOS ends the sequence there, EOS included in token_ids
    eos = ids[3]
    eng = sampling.Engine(Model(engine.config.replace(eos_token_ids=(eos,)), tiny_model.params, BracketTokenizer(), ""),
                          max_batch=8)
    got = eng.generate(PROMPTS[:1], sampling.SamplingParams(temperature=0.0, max_new_tokens=24))[0][0]
    first = ids.index(eos)
    assert got.finish_reason == "eos" and got.token_ids == ids[:first + 1]
    assert got.text == BracketTokenizer().decode(ids[:first])


@pytest.mark.parametrize("kernels", KERNELS)
def test_score_next_token_matches_forward(tiny_model, engine, kernels):
    engine = engine if kernels == "cpu" else sampling.Engine(with_kernels(tiny_model, kernels), max_batch=8)
    cands = [3, 4, 100]
    got = engine.score_next_token(PROMPTS, cands)
    for prompt, row in zip(PROMPTS, got):
        np.testing.assert_allclose(row, full_logprobs(tiny_model, prompt, [0])[-1][cands], atol=1e-5)
    with pytest.raises(ValueError, match="candidates"):
        engine.score_next_token(PROMPTS, [128])


def test_continuation_scored_from_the_cache_matches_forward(tiny_model, engine):
    """`generate(..., then=Continuation)`: the next-token log-probs after prompt + any continuation (the whole
    generated sequence and more, a part of it and a new token, exactly it) equal the full forward pass."""
    seen = {}

    def tokens(c):
        ids, k = c.token_ids, len(seen) % 3
        seen[id(c)] = ids + [7, 9] if k == 0 else ids[:len(ids) // 2] + [5] if k == 1 else list(ids)
        return seen[id(c)]

    cands = (3, 4, 100)
    engine.stats.clear()
    out = engine.generate(PROMPTS, sampling.SamplingParams(temperature=1.0, max_new_tokens=10, n=2, seed=3),
                          then=sampling.Continuation(tokens, cands))
    assert engine.stats["continuation_reused"] > engine.stats["continuation_tokens"] > 0
    for prompt, cs in zip(PROMPTS, out):
        for c in cs:
            want = full_logprobs(tiny_model, prompt, seen[id(c)] + [0])[-1][list(cands)]
            np.testing.assert_allclose(c.continuation, want, atol=1e-5)


# Prompts that share a 34-token prefix (a judge's instructions) and differ after it, as the prompts of one call
# of a judge do: the engine runs the prefix once per batch (rounded down to 32 tokens) and the rest per prompt.
_SHARED = [1] + [(7 * i) % 97 + 2 for i in range(33)]
PREFIXED = [_SHARED + [50 + j] * (1 + 3 * j) for j in range(3)] + [_SHARED + [90, 91]]


def test_prefix_bucket_and_what_is_shared(tiny_model):
    assert [sampling.prefix_bucket(n) for n in (0, 31, 32, 39, 40, 57, 63, 64, 79, 163, 300)] == \
        [0, 0, 32, 32, 40, 56, 56, 64, 64, 160, 256]
    eng = sampling.Engine(tiny_model, max_batch=8)
    assert eng._shared_prefix(PREFIXED) == 32
    assert eng._shared_prefix(PREFIXED[:1]) == 0  # one prompt: its samples share its prefill anyway
    assert eng._shared_prefix(PREFIXED[:2] * 3) == 0  # two distinct prompts (one pair's two orders): not worth it
    assert eng._shared_prefix(PREFIXED[:3]) == 32
    assert eng._shared_prefix([_SHARED[:33], _SHARED + [5], _SHARED + [6]]) == 32  # the shortest keeps a token
    assert eng._shared_prefix([_SHARED[:32], _SHARED + [5], _SHARED + [6]]) == 0
    assert eng._shared_prefix(PROMPTS) == 0
    assert sampling.Engine(tiny_model, max_batch=8, share_prefix=False)._shared_prefix(PREFIXED) == 0


@pytest.mark.parametrize("kernels", KERNELS)
def test_shared_prefix_matches_full_forward(tiny_model, kernels):
    """Greedy and sampled rows, forced continuations and next-token scores of prompts whose prefix ran once per
    batch equal the full forward pass of each whole prompt, and the samples equal those without sharing."""
    model = with_kernels(tiny_model, kernels)
    eng = sampling.Engine(model, max_batch=4)  # n = 2: two prompts per batch, two batches
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=12, n=2, ignore_eos=True, seed=5)
    seen = {}

    def tokens(c):
        seen[id(c)] = c.token_ids[:len(c.token_ids) // 2] + [5]
        return seen[id(c)]

    cands = (3, 4, 100)
    out = eng.generate(PREFIXED, sp, then=sampling.Continuation(tokens, cands))
    greedy = eng.generate(PREFIXED, sampling.SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True))
    scores = eng.score_next_token(PREFIXED, list(cands))
    assert eng.stats["shared_prefix_tokens"] == 3 * 3 * 32  # each call ran the prefix once, not 4 times
    assert eng.compilations["prefix"] == 1
    for prompt, cs, g, row in zip(PREFIXED, out, greedy, scores):
        for c in [*cs, g[0]]:
            ref = full_logprobs(tiny_model, prompt, c.token_ids)
            np.testing.assert_allclose(c.logprobs, ref[np.arange(12), c.token_ids], atol=1e-4)
        for c in cs:
            want = full_logprobs(tiny_model, prompt, seen[id(c)] + [0])[-1][list(cands)]
            np.testing.assert_allclose(c.continuation, want, atol=1e-4)
        assert g[0].token_ids == ref_argmax(tiny_model, prompt, 12)
        np.testing.assert_allclose(row, full_logprobs(tiny_model, prompt, [0])[-1][list(cands)], atol=1e-5)
    unshared = sampling.Engine(model, max_batch=4, share_prefix=False).generate(PREFIXED, sp)
    assert [[c.token_ids for c in cs] for cs in out] == [[c.token_ids for c in cs] for cs in unshared]


def test_bad_input_is_rejected(engine):
    with pytest.raises(ValueError, match="top_p"):
        sampling.SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1], []], sampling.SamplingParams(max_new_tokens=16))
    with pytest.raises(ValueError, match="context"):
        engine.generate([[1] * 250], sampling.SamplingParams(max_new_tokens=10))


def assert_same_samples(path_a, path_b):
    """Two runner outputs hold the same ids and tokens; log-probs equal up to float rounding (a prompt's
    batch-mates change the padded shapes its logits are computed in)."""
    read = lambda p: {d["id"]: d["completions"] for d in map(json.loads, open(p))}  # noqa: E731
    a, b = read(path_a), read(path_b)
    assert sorted(a) == sorted(b)
    for rid in a:
        assert [(c["token_ids"], c["text"], c["finish_reason"]) for c in a[rid]] == \
               [(c["token_ids"], c["text"], c["finish_reason"]) for c in b[rid]], rid
        for ca, cb in zip(a[rid], b[rid]):
            np.testing.assert_allclose(ca["logprobs"], cb["logprobs"], atol=1e-4)


def test_runner_resumes_without_redoing(engine, tmp_path):
    records = [{"id": f"p{i}", "prompt_ids": p} for i, p in enumerate(PROMPTS + [[1, 2, 3, 4]])]
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=6, n=2, seed=5)
    fresh = tmp_path / "fresh.jsonl"
    assert generate.run(engine, records, sp, str(fresh), progress=False) == 4
    out = tmp_path / "out.jsonl"
    generate.run(engine, records[:2], sp, str(out), progress=False)
    with open(out, "a") as f:
        f.write('{"id": "p3", "compl')  # a line cut short by a killed job
    before = engine.stats["rows"]
    assert generate.run(engine, records, sp, str(out), progress=False) == 2
    assert engine.stats["rows"] - before == 4  # only the two missing prompts were sampled
    assert_same_samples(out, fresh)
    assert all(len(d["completions"]) == 2 for d in map(json.loads, open(out)))
    with pytest.raises(generate.InputError, match="<records>:2: field 'id'"):
        generate.run(engine, [records[0], {"prompt_ids": [1]}], sp, str(out), progress=False)


def test_each_prompt_is_reported_when_its_batch_ends(tiny_model):
    eng = sampling.Engine(tiny_model, max_batch=4)  # n=2: two prompts per batch
    calls = []
    out = eng.generate(PROMPTS + [[1, 2, 3, 4]], sampling.SamplingParams(max_new_tokens=4, n=2),
                       on_prompt=lambda i, cs: calls.append((i, eng.stats["rows"], cs)))
    assert sorted(i for i, _, _ in calls) == [0, 1, 2, 3]
    assert sorted(rows for _, rows, _ in calls) == [4, 4, 8, 8]  # reported after the 1st batch, not the last
    assert all(cs == out[i] for i, _, cs in calls)


def tiny_cli_model(tmp_path_factory):
    from tinyhf import make_model_dir

    return make_model_dir(str(tmp_path_factory.mktemp("tinyhf") / "m"))


def run_generate_cli(model_dir, inp, out, *extra, cache=None):
    """The generate CLI in a subprocess with the session's compilation cache, or with `cache` (a private copy for
    a run that gets killed: it could be cut short while writing an entry)."""
    cmd = [sys.executable, "-m", "genrm_jax.generate", "--model", model_dir, "--input", str(inp), "--output",
           str(out), "--n", "2", "--top-p", "0.95", "--max-new-tokens", "24", "--max-batch", "4", "--seed", "3",
           *extra]
    env = environment()
    if cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_generate_cli_killed_and_resumed_equals_uninterrupted(tmp_path_factory, tmp_path):
    model_dir = tiny_cli_model(tmp_path_factory)
    inp = tmp_path / "prompts.jsonl"
    with open(inp, "w") as f:
        for i in range(24):
            f.write(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": f"question {i} " * (1 + i % 5)}]})
                    + "\n")
    whole = tmp_path / "whole.jsonl"
    p = run_generate_cli(model_dir, inp, whole)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    killed = tmp_path / "killed.jsonl"
    cache = str(tmp_path / "jax-cache")
    shutil.copytree(environment()["JAX_COMPILATION_CACHE_DIR"], cache)
    p = run_generate_cli(model_dir, inp, killed, cache=cache)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:  # kill -9 once the first batch is on disk
        if killed.exists() and killed.stat().st_size > 0:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    p.wait(timeout=60)
    written = sum(1 for _ in open(killed))
    assert p.returncode == -signal.SIGKILL and 0 < written < 24, (p.returncode, written)
    p = run_generate_cli(model_dir, inp, killed)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert_same_samples(killed, whole)
    assert sum(1 for _ in open(whole)) == 24
    # bad input names the file and line, exit 2, no traceback
    with open(inp, "a") as f:
        f.write(json.dumps({"id": "long", "prompt_ids": [5] * 3000}) + "\n")
    p = run_generate_cli(model_dir, inp, tmp_path / "x.jsonl")
    assert p.wait(timeout=300) == 2
    err = p.stderr.read()
    assert f"{inp}:25: prompt of 3000 tokens" in err and "Traceback" not in err


@pytest.mark.slow
def test_greedy_matches_transformers(smollm):
    import torch
    from transformers import AutoModelForCausalLM

    from genrm_jax.tokenizer import chat_ids

    questions = ["What is the capital of France?", "Write a haiku about the sea.",
                 "Explain recursion to a child in two sentences.", "List three prime numbers.",
                 "Which is heavier, a kilogram of feathers or a kilogram of iron?"]
    prompts = [chat_ids(smollm.tokenizer, [{"role": "user", "content": q}]) for q in questions]
    eng = sampling.Engine(smollm, max_batch=8)
    ours = eng.generate(prompts, sampling.SamplingParams(temperature=0.0, max_new_tokens=64))
    hf = AutoModelForCausalLM.from_pretrained(smollm.path, dtype=torch.float32).eval()
    for prompt, (c,) in zip(prompts, ours):
        with torch.inference_mode():
            ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              do_sample=False, max_new_tokens=64, pad_token_id=smollm.tokenizer.pad_token_id)
        assert c.token_ids == ref[0, len(prompt):].tolist()


# Known problem (2026-12-04): with the whole vocabulary kept (top-p 1.0), a row's token can differ between batch
# sizes on this session's machine, at d7e7135 as well (it passed there in the 2026-11-30 CI run). Not yet
# diagnosed; the likely cause is that XLA:CPU sums inverse_cdf's float cumsum over 49,152 probabilities in another
# order for other batch shapes, so a target near a boundary picks the neighbour (top-p 0.95 and top-k hold).
# Open in issue 22; exact integer weights would remove the dependence.
_FULL_VOCAB = pytest.param(0, 1.0, marks=pytest.mark.xfail(reason="float cumsum order depends on the batch shape "
                                                                   "on some CPUs (see the comment above)",
                                                            strict=False))


@pytest.mark.slow
@pytest.mark.parametrize("top_k,top_p", [(0, 0.95), _FULL_VOCAB, (50, 0.95)])
def test_embedded_model_samples_do_not_depend_on_the_batch(smollm, top_k, top_p):
    """The STaR settings (T 1.0, top-p 0.95) and the other paths, alone vs inside batches up to 24 rows."""
    from genrm_jax.tokenizer import chat_ids

    questions = ["Which answer is better, A or B? Explain.", "Name a prime number.", "What is 7 times 8?",
                 "Write one sentence about rain.", "Is water wet?", "Give me a synonym of quick.",
                 "What colour is the sky?", "Count to five.", "Translate 'cat' into French.",
                 "What is the capital of Italy?", "Say hello.", "Why do leaves fall?"]
    prompts = [chat_ids(smollm.tokenizer, [{"role": "user", "content": q}]) for q in questions]
    eng = sampling.Engine(smollm, max_batch=32)
    sp = sampling.SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, max_new_tokens=8, n=2,
                                 ignore_eos=True, seed=0)
    alone, batched = samples_alone_and_in_batches(eng, prompts, sp, (5, 12))  # 10 and 24 rows
    for size, got in batched.items():
        assert got == alone, f"top_k={top_k} top_p={top_p}: batch of {size} prompts differs from alone"
