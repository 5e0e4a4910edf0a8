"""genrm_jax.plan: per-device figures against hand computations, refusals with a mesh that fits, and the planned
weight bytes against real sharded arrays (8 simulated CPU devices in a subprocess)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from genrm_jax import plan
from genrm_jax.finetune import FinetuneConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2**30

# Llama-3.1-8B by hand: L layers of D-wide attention (32 query heads, 8 KV heads of 128) and an F-wide MLP.
L, D, F, H, K, DH, V = 32, 4096, 14336, 32, 8, 128, 128256
MATRICES = V * D + D * V + L * (D * H * DH + 2 * D * K * DH + H * DH * D + 3 * D * F)  # embed, lm_head, layers
NORMS = (2 * L + 1) * D  # attn_norm and mlp_norm per layer, the final norm: replicated on every device
# int32 step counters of scale_by_adam and of the schedule, and the schedule's own counter and 4 numbers
# (train.make_optimizer keeps them in the state as data), replicated
ADAM_COUNTERS = 2 * 4 + 5 * 4


def small_batch(**kw):
    return FinetuneConfig(**{"kind": "sft", "batch_size": 4, "max_len": 512, **kw})


def test_llama_8b_is_known_without_weights():
    c = plan.model_config("llama-3.1-8b")
    assert c.num_params == MATRICES + NORMS == 8_030_261_248
    assert plan.model_config("meta-llama/Llama-3.1-8B-Instruct") == c
    assert plan.model_config("llama-3.1-70b").num_params == 70_553_706_496


@pytest.mark.parametrize("accelerator, chips, mesh", [("v5p-8", 4, (1, 4, 1)), ("v4-32", 16, (1, 16, 1)),
                                                      ("v5p-16", 8, (1, 4, 2))])
def test_llama_8b_adamw_weights_per_device(accelerator, chips, mesh):
    kind, n = plan.device(accelerator)
    assert n == chips and mesh[0] * mesh[1] * mesh[2] == chips
    p = plan.estimate(plan.model_config("llama-3.1-8b"), small_batch(), mesh, kind.bytes)
    # Every matrix has an embed axis (-> fsdp) and a heads / MLP / vocab axis (-> model): split over all chips.
    per_device = (MATRICES // chips + NORMS) * 4  # float32
    assert p.training["params"] == per_device
    assert p.training["gradients"] == per_device
    assert p.training["optimizer"] == 2 * per_device + ADAM_COUNTERS  # mu and nu
    assert p.training["held_weights"] == per_device  # held_copies=1
    assert p.training_total == 5 * per_device + ADAM_COUNTERS + p.training["activations"]


def test_device_table():
    assert plan.device("v5p")[0].bytes == 95 * GiB and plan.device("v5p")[1] is None
    assert plan.device("v5litepod-16") == (plan.DEVICES["v5e"], 16)  # v5e types count chips
    assert plan.device("H200")[0].bytes > plan.device("h100")[0].bytes
    with pytest.raises(ValueError, match="--device=v9-8: unknown device"):
        plan.device("v9-8")


def test_activations_follow_rows_and_remat_policy():
    c = plan.model_config("llama-3.1-8b")
    v5p = plan.DEVICES["v5p"].bytes

    def acts(mesh=(1, 4, 1), **kw):
        return plan.estimate(c, small_batch(**kw), mesh, v5p)

    nothing, dense, off = acts(remat_policy=""), acts(remat_policy="dense"), acts(remat_policy=None)
    rows, t = 1, 512  # 4 rows over fsdp=4
    assert nothing.details["rows_per_device"] == rows
    assert nothing.details["parts"]["saved_per_layer"] == rows * t * D * 4  # the layer input, float32
    per_token_dense = D + 2 * K * DH + H * DH + D + 3 * F + D + H * DH  # + x: q, k, v, attn, wo, gate/up/h, down
    assert dense.details["parts"]["saved_per_layer"] == rows * t * per_token_dense * 4
    assert nothing.training["activations"] < dense.training["activations"] < off.training["activations"]
    # DPO puts both answers of a pair through one forward: twice the rows of SFT's batch
    assert acts(kind="dpo").details["rows_per_device"] == 2 * rows
    # data parallelism splits rows too; tensor parallelism splits heads and the MLP, so the layer saves less
    assert acts((4, 1, 1)).details["parts"]["saved_per_layer"] == dense.details["parts"]["saved_per_layer"]
    assert acts((1, 2, 2)).details["parts"]["saved_per_layer"] < 2 * dense.details["parts"]["saved_per_layer"]


@pytest.mark.parametrize("policy", ["", "dense", None])
def test_activations_near_what_xla_allocates(policy):
    """The estimate against XLA's own count of a compiled training step's temporaries (one CPU device, the
    accelerator kernels): within a factor of 2 (the estimate leaves out XLA's fusion and scheduling choices)."""
    import jax
    import jax.numpy as jnp

    from conftest import tiny_config
    from genrm_jax import losses
    from genrm_jax.models import llama

    c = tiny_config(vocab_size=2048, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8,
                    num_kv_heads=4, head_dim=32, kernels="xla", remat=policy is not None, remat_policy=policy or "")
    ft = small_batch(batch_size=8, max_len=256, remat_policy=policy)
    planned = plan.estimate(c, ft, (1, 1, 1), 2**34).training["activations"]
    loss = losses.make_loss_fn("sft", c)
    params = jax.eval_shape(lambda: {"model": llama.init(jax.random.PRNGKey(0), c)})
    batch = {k: jax.ShapeDtypeStruct((8, 256), jnp.int32) for k in ("tokens", "mask", "loss_mask")}
    step = jax.jit(jax.grad(lambda p, b: loss(p, b, None).value)).lower(params, batch).compile()
    allocated = step.memory_analysis().temp_size_in_bytes
    assert allocated / 2 < planned < 2 * allocated, (planned, allocated)


def test_kv_cache():
    c = plan.model_config("llama-3.1-8b")
    s = plan.Sampling(rows=32, length=5120, cache_dtype="bfloat16")
    p = plan.estimate(c, small_batch(), (1, 4, 2), plan.DEVICES["v5p"].bytes, sampling=s, held_copies=2)
    # rows over data x fsdp (4), KV heads over model (2)
    assert p.sampling["kv_cache"] == (32 // 4) * 5120 * L * (K // 2) * DH * 2 * 2
    assert p.sampling["held_weights"] == 2 * p.sampling["params"] == 2 * p.training["params"]


def test_refusal_names_the_figures_and_a_mesh_of_the_same_devices():
    c = plan.model_config("llama-3.1-8b")
    v5p = plan.DEVICES["v5p"].bytes
    with pytest.raises(plan.PlanError) as e:
        plan.check(c, small_batch(), {"data": 4}, v5p)  # pure data parallel: every chip holds all 8B weights
    p = plan.estimate(c, small_batch(), {"data": 4}, v5p)
    message = str(e.value)
    assert f"needs {p.peak / GiB:.1f} GiB per device, {p.limit / GiB:.1f} usable" in message
    assert f"params {p.training['params'] / GiB:.1f}" in message
    assert "a mesh of the same 4 devices that fits: data=1 fsdp=4 model=1" in message
    assert plan.check(c, small_batch(), (1, 4, 1), v5p).fits


def test_refusal_suggests_the_smallest_mesh_that_fits():
    c = plan.model_config("llama-3.1-8b")
    v4 = plan.DEVICES["v4"].bytes
    ft = small_batch(batch_size=16)
    with pytest.raises(plan.PlanError, match="no mesh of 4 devices fits") as e:
        plan.check(c, ft, (1, 4, 1), v4)  # v4-8: weights, gradients, moments and a held copy exceed 4 x 32 GiB
    sizes = dict((k, int(v)) for k, v in re.findall(r"(data|fsdp|model)=(\d+)", str(e.value).split("does:")[1]))
    n = sizes["data"] * sizes["fsdp"] * sizes["model"]
    assert n == 8 and plan.estimate(c, ft, sizes, v4).fits
    # and it is the first that fits: none of 4 devices does
    assert not any(plan.estimate(c, ft, m, v4).fits for m in [(4, 1, 1), (2, 2, 1), (1, 4, 1), (1, 2, 2), (1, 1, 4)])


def test_model_from_a_hugging_face_directory(tmp_path):
    from genrm_jax.models import llama

    config = plan.model_config("llama-3.1-8b")
    (tmp_path / "config.json").write_text(json.dumps(llama.config_to_hf(config)))
    assert plan.model_config(str(tmp_path)).num_params == config.num_params
    with pytest.raises(FileNotFoundError, match="neither a registered model"):
        plan.model_config("no-such-model")


# The planned bytes of the weights and AdamW moments equal what real sharded arrays hold on a device.
REAL_SHARDS = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, "tests")
    import jax
    from conftest import tiny_config
    from genrm_jax import plan, sharding, train
    from genrm_jax.finetune import FinetuneConfig
    from genrm_jax.models import llama

    def on_device(tree, device):
        return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards
                   if s.device == device)

    config = tiny_config(num_heads=8, num_kv_heads=4, head_dim=8)
    optimizer = train.make_optimizer(train.OptimConfig())
    for sizes in [(8, 1, 1), (1, 8, 1), (1, 2, 4), (2, 2, 2)]:
        mesh = sharding.make_mesh(*sizes)
        shardings = sharding.shardings(llama.logical_axes(config), mesh)
        params = jax.jit(lambda k: llama.init(k, config), out_shardings=shardings)(jax.random.PRNGKey(0))
        state = train.init_state(params, optimizer, shardings=train.state_shardings(params, shardings, optimizer))
        p = plan.estimate(config, FinetuneConfig(), sizes, 2**30)
        for d in jax.devices():
            assert on_device(state.params, d) == p.training["params"], (sizes, d)
            assert on_device(state.opt_state, d) == p.training["optimizer"], (sizes, d)
        print(sizes, p.training["params"], p.training["optimizer"])
    print("ok")
""")


def test_planned_weight_bytes_equal_real_shards():
    out = subprocess.run([sys.executable, "-c", REAL_SHARDS], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.endswith("ok\n"), out.stdout + out.stderr


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "genrm_jax.plan", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_cli_json_and_table():
    out = run_cli("--model=llama-3.1-8b", "--device=v4-32", "--config.train.batch_size=16",
                  "--config.train.max_len=1024", "--compute_dtype=bfloat16", "--json")
    result = json.loads(out.stdout)
    assert result["mesh"] == {"data": 1, "fsdp": 16, "model": 1}  # every chip of v4-32 on fsdp by default
    assert result["training"]["params"] == (MATRICES // 16 + NORMS) * 4
    assert result["details"]["kind"] == "dpo" and result["details"]["held_copies"] == 2  # STaR-DPO by default
    assert out.returncode == (0 if result["fits"] else 1) and (result["error"] is None) == result["fits"]
    table = run_cli("--model=llama-3.1-8b", "--device=v5p-8", "--mesh=data=4")  # pure data parallel: refused
    assert table.returncode == 1 and "DOES NOT FIT" in table.stdout
    assert "a mesh of the same 4 devices that fits: data=1 fsdp=4 model=1" in table.stdout  # the weights split


@pytest.mark.parametrize("args, message", [
    (["--model=llama-3.1-8b", "--device=v9"], "unknown device"),
    (["--model=llama-3.1-8b", "--device=v5p-8", "--mesh=1,2"], "--mesh=1,2: expected three sizes"),
    (["--model=llama-3.1-8b", "--device=v5p-8", "--mesh=fsdp=8"], "is 8 devices, not 4"),
    (["--device=v5p-8"], "--model (or --config.model) is required"),
    (["--model=llama-3.1-8b"], "--device"),
])
def test_cli_errors_are_one_line(args, message):
    out = run_cli(*args)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


# What each experiment truly trains (read in its code: baselines.py one fit of the base model; star/loop.py a fit per
# iteration while the sampler keeps its own weights; star/sre.py DPO iterations with J_SFT kept for best-of-N) and
# the weight copies held besides the trained ones. Written out here, not read from the registry, so that a wrong
# registry entry fails.
TRAINS = {"genrm": ("sft", 1), "cot_genrm": ("sft", 1), "bt_rm": ("bt", 1), "pairrm": ("pairrm", 1),
          "star_sft": ("sft", 2), "star_dpo": ("dpo", 2), "rationalizer": ("sft", 2),
          "self_rationalization": ("dpo", 3)}
CONFIGS = [(m, p) for m in TRAINS for p in ("smoke", "default", "small", "paper")] + [("rationalizer", "ipo")]


def _config(module, preset):
    import importlib

    return importlib.import_module(f"experiments.configs.{module}").get_config(preset)


@pytest.mark.parametrize("module, preset", CONFIGS)
def test_the_planner_plans_what_the_run_trains(module, preset):
    """plan.config_inputs (what `python -m genrm_jax.plan` and the run's own check before loading plan) takes the
    loss and held copies from the config's method, never from the config's file name."""
    from genrm_jax import finetune, methods

    c = _config(module, preset)
    ft, sampling, held = plan.config_inputs(c)
    kind, copies = TRAINS[module] if preset != "ipo" else ("ipo", 2)
    assert (ft.kind, held) == (kind, copies)
    # ... which is the FinetuneConfig the experiment skeleton trains with (genrm_jax/experiment.py)
    assert finetune.FinetuneConfig.from_config(c.train, kind=methods.of_config(c).loss) == ft
    assert (sampling is None) == (module in ("bt_rm", "pairrm"))  # a reward head samples nothing
    if sampling is not None:
        new = max(c[g].max_new_tokens for g in ("judge", "star", "sre", "pointwise") if g in c)
        assert sampling.length >= new and sampling.rows == c.engine.max_batch


def test_the_planner_reads_the_method_not_the_file_name(tmp_path):
    """`python -m genrm_jax.plan` on a config file whose name says nothing: Self-Rationalization is planned as the
    DPO it trains with three held copies (it used to be planned as SFT with one)."""
    path = tmp_path / "anything.py"
    path.write_text("from experiments.configs import self_rationalization\n\n\ndef get_config(arg=None):\n"
                    "    return self_rationalization.get_config('smoke')\n")
    out = run_cli(f"--config={path}", "--model=llama-3.1-8b", "--device=v5p-8", "--json")
    details = json.loads(out.stdout)["details"]
    assert (details["kind"], details["held_copies"]) == ("dpo", 3), out.stderr[-500:]


def test_the_planner_refuses_a_method_that_trains_nothing():
    with pytest.raises(ValueError, match="llm_judge.*trains nothing"):
        plan.config_inputs(_config("llm_judge", "default"))
