"""The sampler under a device mesh equals the single-device sampler, with its params and KV cache really split.

JAX in the pytest process is already initialised with one CPU device, so the check runs in a child process with
8 simulated ones (`--xla_force_host_platform_device_count=8`): this file is also that child's script.
"""
import json
import os
import subprocess
import sys

MESHES = [(8, 1, 1), (1, 8, 1), (1, 2, 4), (2, 2, 2)]  # (data, fsdp, model)
# 8 query / 4 KV heads: divisible by the model axis of every mesh above; hidden 64 and vocab 128 by fsdp x model
CONFIG = dict(num_heads=8, num_kv_heads=4, head_dim=8, hidden_size=64, intermediate_size=128, kernels="xla")
PROMPTS = [[1, 5, 7, 9, 11], [1, 3], [1, 20, 30, 40, 50, 60, 70, 80, 90], [1, 4, 4, 4], [1, 99, 98]]


def _child() -> dict:
    import jax
    import numpy as np

    from conftest import tiny_config
    from genrm_jax import sampling, sharding
    from genrm_jax.io import Model
    from genrm_jax.models import llama

    class Tokenizer:
        def decode(self, ids, skip_special_tokens=False):
            return " ".join(map(str, ids))

    cfg = tiny_config(**CONFIG)
    model = Model(cfg, llama.init(jax.random.PRNGKey(0), cfg), Tokenizer(), "")
    runs = {n: sampling.SamplingParams(temperature=0.0, max_new_tokens=12, n=n, ignore_eos=True) for n in (1, 2)}

    def sample(eng):
        out = {n: eng.generate(PROMPTS, sp) for n, sp in runs.items()}
        tokens = {n: [[c.token_ids for c in cs] for cs in o] for n, o in out.items()}
        logprobs = np.concatenate([np.ravel([c.logprobs for cs in o for c in cs]) for o in out.values()])
        return tokens, logprobs, eng.score_next_token(PROMPTS, [3, 4, 100])

    one_device = sampling.Engine(model, max_batch=8)
    ref_tokens, ref_logprobs, ref_scores = sample(one_device)
    results = {"devices": len(jax.devices())}
    for shape in MESHES:
        mesh = sharding.make_mesh(*shape)
        eng = sampling.Engine(model, max_batch=8, mesh=mesh)
        tokens, logprobs, scores = sample(eng)
        sp = runs[2]
        arrays, _ = eng._batch_inputs(PROMPTS, eng._plan(PROMPTS, sp)[0], sp)
        state = eng._run_kernels(arrays, sp)
        shard = lambda a: list(a.addressable_shards[0].data.shape)  # noqa: E731
        results[str(shape)] = {
            "tokens_equal": tokens == ref_tokens,
            "logprob_diff": float(np.abs(logprobs - ref_logprobs).max()),
            "score_diff": float(np.abs(scores - ref_scores).max()),
            "wq": shard(eng.params["layers"]["wq"]), "w_gate": shard(eng.params["layers"]["w_gate"]),
            "embed": shard(eng.params["embed"]), "lm_head": shard(eng.params["lm_head"]),
            "new_k": [list(state.new_kv[0].shape), shard(state.new_kv[0])],
            "prompt_k": [list(state.prompt_kv[0].shape), shard(state.prompt_kv[0])],
            "tokens": [list(state.tokens.shape), shard(state.tokens)],
        }
    # new weights on the last mesh: placed like the old ones, the same compiled kernels, the new results
    other = llama.init(jax.random.PRNGKey(1), cfg)
    traces = dict(eng.compilations)
    eng.set_params(other)
    one_device.set_params(other)
    results["set_params"] = {"retraced": dict(eng.compilations) != traces,
                             "tokens_equal": sample(eng)[0] == sample(one_device)[0],
                             "tokens_changed": sample(eng)[0] != ref_tokens,
                             "wq": shard(eng.params["layers"]["wq"])}
    return results


def test_greedy_sampling_under_meshes_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["devices"] == 8
    L, D, F, V, H, K, Dh = 2, 64, 128, 128, 8, 4, 8
    for data, fsdp, model in MESHES:
        r = got[str((data, fsdp, model))]
        assert r["tokens_equal"], (data, fsdp, model)
        assert r["logprob_diff"] <= 1e-5 and r["score_diff"] <= 1e-5, r
        # params: "embed" over fsdp, heads / mlp / vocab over model (sharding.DEFAULT_RULES)
        assert r["wq"] == [L, D // fsdp, H // model, Dh], r
        assert r["w_gate"] == [L, D // fsdp, F // model], r
        assert r["embed"] == [V // model, D // fsdp] and r["lm_head"] == [D // fsdp, V // model], r
        # the KV caches: batch over data x fsdp, KV heads over model
        for name in ("new_k", "prompt_k"):
            (layers, rows, heads, slots, dh), piece = r[name]
            assert (layers, heads, dh) == (L, K, Dh) and piece == [L, rows // (data * fsdp), K // model, slots, Dh], r
        (rows, width), piece = r["tokens"]
        assert piece == [rows // (data * fsdp), width], r
    data, fsdp, model = MESHES[-1]
    assert got["set_params"] == {"retraced": False, "tokens_equal": True, "tokens_changed": True,
                                 "wq": [L, D // fsdp, H // model, Dh]}


def test_a_mesh_needs_the_xla_kernels():
    import jax
    import pytest
    from conftest import tiny_config

    from genrm_jax import sampling, sharding
    from genrm_jax.io import Model
    from genrm_jax.models import llama

    cfg = tiny_config(**{**CONFIG, "kernels": "cpu"})
    model = Model(cfg, llama.init(jax.random.PRNGKey(0), cfg), None, "")
    with pytest.raises(ValueError, match="kernels='xla'"):
        sampling.Engine(model, mesh=sharding.make_mesh())


if __name__ == "__main__":
    print(json.dumps(_child()))
