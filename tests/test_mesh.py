"""Sharded training, checkpoints and loading on 8 simulated CPU devices (tests/meshcases.py, in a subprocess:
this process's JAX already has one device), and the mesh of a config."""
import os
import subprocess
import sys

import ml_collections
import pytest

from genrm_jax import sharding

HERE = os.path.dirname(os.path.abspath(__file__))


def run_case(name: str, timeout: int = 600):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "meshcases.py"), name], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=os.path.dirname(HERE))
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("ok"), proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_train_step_under_four_meshes_equals_one_device():
    out = run_case("train")
    assert out.count("equal one device") == 4


def test_checkpoint_saved_under_one_mesh_restores_under_others():
    assert run_case("checkpoint").count("equal, resharded") == 3


def test_fit_under_a_mesh_equals_the_plain_fit():
    run_case("finetune")


def test_hf_load_reads_only_each_devices_slices():
    assert run_case("load").count("shard-sized reads only") == 6


def test_mesh_from_config():
    mesh = sharding.mesh_from_config(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "model": 1}
    with pytest.raises(ValueError, match="config.mesh.fsdp="):
        sharding.mesh_from_config({"data": -1, "fsdp": "2", "model": 1})
    with pytest.raises(ValueError, match="config.mesh.pipeline"):
        sharding.mesh_from_config({"data": -1, "fsdp": 1, "model": 1, "pipeline": 2})
    with pytest.raises(ValueError, match="config.mesh: mesh .* does not use the 1 devices"):
        sharding.mesh_from_config({"data": 2, "fsdp": 1, "model": 1})


def test_presets_mesh():
    from experiments.configs import presets

    for name in ("smoke", "default", "small"):
        assert presets.base(name).mesh.to_dict() == {"data": -1, "fsdp": 1, "model": 1}
    assert presets.base("paper").mesh.to_dict() == {"data": 1, "fsdp": -1, "model": 1}


def test_star_dpo_smoke_runs_on_eight_devices_with_a_2_2_2_mesh(tmp_path):
    """The whole STaR-DPO experiment sharded: model loaded into shards, sampler, DPO and export under one mesh."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "experiments.star_dpo", "--workdir", str(tmp_path / "run"),
           "--config=experiments/configs/star_dpo.py:smoke", "--config.mesh.data=2", "--config.mesh.fsdp=2",
           "--config.mesh.model=2", "--config.train.batch_size=4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=os.path.dirname(HERE))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["mesh"] == {"data": 2, "fsdp": 2, "model": 2}
    assert [r["stage"] for r in report["rows"]] == ["eval_0", "eval_1", "eval_2", "eval_3"]
    assert (tmp_path / "run" / "export" / "model.safetensors").exists()
