"""Checks that need several devices, run by test_mesh.py in a subprocess with 8 simulated CPU devices
(`python tests/meshcases.py CASE`; the pytest process itself has one device). A failed check raises."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from conftest import tiny_config  # noqa: E402

from genrm_jax import losses, sharding, train  # noqa: E402
from genrm_jax.models import heads, llama  # noqa: E402

MESHES = ((8, 1, 1), (1, 8, 1), (1, 2, 4), (2, 2, 2))
TOL = 1e-5


def config():
    # every sharded dimension divisible by 4 (model) and 8 (fsdp): heads 8, kv heads 4, embed 64, mlp 128
    return tiny_config(num_heads=8, num_kv_heads=4, head_dim=8)


def batch(kind, rows=8, length=16, seed=0):
    rng = np.random.default_rng(seed)
    shape = (rows, length) if kind == "sft" else (rows, 2, length)
    tokens = rng.integers(3, 128, size=shape).astype(np.int32)
    mask = np.ones_like(tokens)
    for i in range(rows):
        mask[i, ..., length - int(rng.integers(0, 4)):] = 0  # right padding of 0-3 tokens
    loss_mask = mask.copy()
    loss_mask[..., : length // 2] = 0
    return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask, "valid": np.ones(rows, np.float32)}


def trainable(cfg, kind):
    p = {"model": llama.init(jax.random.PRNGKey(0), cfg)}
    axes = {"model": llama.logical_axes(cfg)}
    if kind == "bt":
        p["head"] = heads.init(jax.random.PRNGKey(1), cfg)
        axes["head"] = heads.logical_axes()
    return p, axes


def close(a, b, what):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        err = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
        if not err <= TOL:
            raise AssertionError(f"{what} {jax.tree_util.keystr(path)}: max |diff| {err} > {TOL}")


def check_split(tree, shardings_tree, mesh_shape, what):
    """Every leaf's local shards have the shard shape of its sharding, and the big weights really are cut."""
    for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings_tree)):
        want = s.shard_shape(x.shape)
        got = {sh.data.shape for sh in x.addressable_shards}
        if got != {want}:
            raise AssertionError(f"{what} {jax.tree_util.keystr(path)}: shards {got}, expected {want}")
    data, fsdp, model = mesh_shape
    embed = tree["model"]["embed"]  # [V, D]: vocab over model, embed over fsdp
    want = (embed.shape[0] // model, embed.shape[1] // fsdp)
    if embed.addressable_shards[0].data.shape != want:
        raise AssertionError(f"{what} embed shard {embed.addressable_shards[0].data.shape}, expected {want}")


def run_steps(cfg, kind, mesh, steps=2, accum=1):
    params, axes = trainable(cfg, kind)
    # eps 1e-6, not 1e-8: the BT bias's gradient is 0 up to rounding, which AdamW would blow up to lr-sized updates
    # of either sign (g / (|g| + eps)) that no two reduction orders agree on
    opt = train.make_optimizer(train.OptimConfig(learning_rate=1e-4, eps=1e-6, total_steps=10, warmup_fraction=0.0))
    loss_fn = losses.make_loss_fn(kind, cfg)
    sh = None if mesh is None else train.state_shardings(params, sharding.shardings(axes, mesh), opt)
    state = train.init_state(params, opt, shardings=sh)
    step = train.make_train_step(loss_fn, opt, accum_steps=accum, shardings=sh)
    metrics = []
    for i in range(steps):
        state, m = step(state, batch(kind, seed=i), jax.random.PRNGKey(i))
        metrics.append({k: float(v) for k, v in m.items()})
    return state, sh, metrics


def case_train():
    assert jax.device_count() == 8, jax.devices()
    cfg = config()
    params, axes = trainable(cfg, "sft")
    b = batch("sft")
    fwd = jax.jit(lambda p, t, m: llama.forward(p["model"], t, cfg, attention_mask=m).logits)
    ref_logits = fwd(params, b["tokens"], b["mask"])
    ref = {kind: run_steps(cfg, kind, None) for kind in ("sft", "bt")}
    for shape in MESHES:
        mesh = sharding.make_mesh(*shape)
        placed = sharding.place(params, sharding.shardings(axes, mesh))
        rows = sharding.batch_sharding(mesh)
        logits = fwd(placed, jax.device_put(b["tokens"], rows), jax.device_put(b["mask"], rows))
        close(logits, ref_logits, f"mesh {shape} forward logits")
        for kind in ("sft", "bt"):
            accum = 2 if shape == (2, 2, 2) and kind == "sft" else 1
            state, sh, metrics = run_steps(cfg, kind, mesh, accum=accum)
            ref_state, _, ref_metrics = ref[kind]
            if accum == 1:  # accumulation sums in another order: its loss agrees to ~1e-6 (test_train checks it)
                close(state.params, ref_state.params, f"mesh {shape} {kind} params")
                close(state.opt_state, ref_state.opt_state, f"mesh {shape} {kind} opt state")
            for m, r in zip(metrics, ref_metrics):
                for k in r:
                    if abs(m[k] - r[k]) > TOL * max(1.0, abs(r[k])):
                        raise AssertionError(f"mesh {shape} {kind} metric {k}: {m[k]} vs {r[k]}")
            check_split(state.params, sh.params, shape, f"mesh {shape} params")
            mu = optax.tree_utils.tree_get(state.opt_state, "mu")
            check_split(mu, optax.tree_utils.tree_get(sh.opt_state, "mu"), shape, f"mesh {shape} adam mu")
            assert int(state.step) == 2
        print(f"mesh {shape}: forward and 2 train steps (sft, bt) equal one device", flush=True)


def case_checkpoint():
    """Saved under (1, 8, 1), restored under (2, 2, 2), (8, 1, 1) and one device: same values, new shards."""
    import tempfile

    from genrm_jax.checkpoint import Checkpointer

    cfg = config()
    state, sh, _ = run_steps(cfg, "sft", sharding.make_mesh(1, 8, 1), steps=1)
    params, axes = trainable(cfg, "sft")
    opt = train.make_optimizer(train.OptimConfig(learning_rate=1e-4, eps=1e-6, total_steps=10, warmup_fraction=0.0))
    saved = jax.device_get(state)
    with tempfile.TemporaryDirectory() as d:
        ckpt = Checkpointer(d, every=1)
        ckpt.save(1, state)
        ckpt.wait()
        targets = {shape: sharding.make_mesh(*shape) for shape in ((2, 2, 2), (8, 1, 1))}
        targets["one device"] = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
        for name, mesh in targets.items():
            target_sh = train.state_shardings(params, sharding.shardings(axes, mesh), opt)
            restored = ckpt.restore(train.abstract_state(params, opt, target_sh))
            close(restored, saved, f"restored under {name}")
            if name != "one device":
                check_split(restored.params, target_sh.params, name, f"restored under {name}")
            mu = optax.tree_utils.tree_get(restored.opt_state, "mu")["model"]["embed"]
            if mu.sharding != optax.tree_utils.tree_get(target_sh.opt_state, "mu")["model"]["embed"]:
                raise AssertionError(f"restored under {name}: adam mu has sharding {mu.sharding}")
            print(f"saved under (1, 8, 1), restored under {name}: equal, resharded", flush=True)
        restored = ckpt.restore(train.abstract_state(params, opt))  # no mesh at all: one plain device
        close(restored, saved, "restored without a mesh")
        ckpt.close()


def case_finetune():
    """finetune.fit (DPO: reference log-probs too) under (2, 2, 2) equals the fit without a mesh, and its final
    checkpoint restores under (1, 8, 1)."""
    import tempfile

    from chartok import CharTokenizer

    from genrm_jax import finetune

    cfg = config()
    params = llama.init(jax.random.PRNGKey(0), cfg)
    records = [{"messages": [{"role": "user", "content": f"q{i} which?"}], "chosen": f"good {i}",
                "rejected": f"bad answer {i}"} for i in range(10)]
    ft = finetune.FinetuneConfig(kind="dpo", learning_rate=1e-3, batch_size=8, max_len=32, buckets=(32,),
                                 checkpoint_every=1)
    with tempfile.TemporaryDirectory() as d:
        ref, info = finetune.fit(params, records, ft, cfg, CharTokenizer(), f"{d}/plain", progress=False)
        got, info_m = finetune.fit(params, records, ft, cfg, CharTokenizer(), f"{d}/mesh", progress=False,
                                   mesh=sharding.make_mesh(2, 2, 2))
        assert info_m["steps"] == info["steps"] == 2, (info, info_m)
        close(np.load(f"{d}/mesh/reference_logps.npy"), np.load(f"{d}/plain/reference_logps.npy"), "reference")
        close(got, ref, "fit under (2, 2, 2)")
        assert abs(info_m["final_loss"] - info["final_loss"]) <= TOL, (info_m["final_loss"], info["final_loss"])
        assert got["layers"]["wq"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "model", None), \
            got["layers"]["wq"].sharding
        again, info_r = finetune.fit(params, records, ft, cfg, CharTokenizer(), f"{d}/mesh", progress=False,
                                     mesh=sharding.make_mesh(1, 8, 1))
        assert info_r["resumed_from"] == 2, info_r
        close(again, got, "fit restored under (1, 8, 1)")
        try:
            finetune.fit(params, records, ft.__class__(**{**ft.__dict__, "batch_size": 4}), cfg, CharTokenizer(),
                         f"{d}/bad", progress=False, mesh=sharding.make_mesh(8, 1, 1))
        except ValueError as e:
            assert "finetune.batch_size=4" in str(e), e
        else:
            raise AssertionError("a batch of 4 over 8 data-parallel devices was accepted")
    print("fit under (2, 2, 2) equals the plain fit; restored under (1, 8, 1)", flush=True)


def case_load():
    """A Hugging Face directory loaded onto each mesh equals the plain load, and every read from the files was one
    device's slice of one tensor: no host-side copy of a whole sharded weight."""
    import tempfile

    from tinyhf import make_model_dir

    from genrm_jax.io import hf

    reads = []
    real = hf._read_slice

    def counting(info, to_ours, index, dtype):
        out = real(info, to_ours, index, dtype)
        reads.append((info.name, out.shape))
        return out

    hf._read_slice = counting
    with tempfile.TemporaryDirectory() as d:
        make_model_dir(d, num_heads=8, num_kv_heads=4, head_dim=8)
        for scan in (True, False):
            cfg = hf.load_config(d, scan_layers=scan)
            plain = jax.device_get(hf.load_params(d, cfg))
            assert not reads, "the plain load went through the sharded reader"
            for shape in ((1, 8, 1), (1, 2, 4), (2, 2, 2)):
                mesh = sharding.make_mesh(*shape)
                shardings = sharding.shardings(llama.logical_axes(cfg), mesh)
                loaded = hf.load_params(d, cfg, shardings=shardings)
                close(loaded, plain, f"load under {shape} scan_layers={scan}")
                check_split({"model": loaded}, {"model": shardings}, shape, f"load under {shape}")
                # Every weight matrix has one axis on fsdp and one on model: each read must be exactly
                # 1/(fsdp x model) of one file tensor (one layer of one device's shard); norms are replicated, whole.
                hf_shapes = hf.hf_tensor_shapes(cfg)
                for name, got in reads:
                    parts = shape[1] * shape[2] if len(got) > 1 else 1
                    if int(np.prod(got)) * parts != int(np.prod(hf_shapes[name])):
                        raise AssertionError(f"load under {shape}: read {got} of {name} {hf_shapes[name]}")
                # and nothing is read more often than one device's shard per device
                bound = sum(int(np.prod(s.shard_shape(x.shape))) * 8 for x, s in
                            zip(jax.tree.leaves(loaded), jax.tree.leaves(shardings)))
                assert sum(int(np.prod(g)) for _, g in reads) <= bound
                reads.clear()
                print(f"load under {shape} scan_layers={scan}: equal, shard-sized reads only", flush=True)
    hf._read_slice = real


if __name__ == "__main__":
    globals()["case_" + sys.argv[1]]()
    print("ok")
