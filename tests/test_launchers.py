"""launchers/tpu.py and launchers/gpu.py: the commands of a dry run, and real runs against fake `gcloud` and
`sbatch` executables that record their argv (no network, no cloud tools needed)."""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACED = "--config.model=/data/my model"  # one argument with a space: must reach the experiment as one
EXPERIMENT = ["--", "experiments.star_dpo", "--config=experiments/configs/star_dpo.py:paper", SPACED,
              "--workdir=runs/x"]


def launch(module, *args, path_prefix=None):
    env = dict(os.environ)
    if path_prefix:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return subprocess.run([sys.executable, "-m", f"launchers.{module}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def dry_lines(module, *args):
    out = launch(module, "--dry_run", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def tpu_args(tmp_path, *extra):
    return ["--name=genrm", "--zone=us-central2-b", "--accelerator=v4-32", f"--logs={tmp_path}/logs",
            f"--archive={tmp_path}/code.tgz", *extra, *EXPERIMENT]


def gcloud_verb(argv):
    """['gcloud', 'compute', 'tpus', 'tpu-vm', VERB, ...] -> VERB (None for other commands)."""
    return argv[4] if argv[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] else None


def flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def test_tpu_dry_run_commands_in_order(tmp_path):
    cmds = [shlex.split(line) for line in dry_lines("tpu", *tpu_args(tmp_path, "--spot"))]
    create, pack, push, setup, mkdir, run, fetch, delete = cmds
    assert gcloud_verb(create) == "create" and create[5] == "genrm" and "--spot" in create
    assert flag(create, "accelerator-type") == "v4-32" and flag(create, "version") == "tpu-ubuntu2204-base"
    assert all(flag(c, "zone") == "us-central2-b" for c in cmds if gcloud_verb(c))
    assert pack[1:] == [os.path.join(REPO, "launchers", "pack.py"), f"{tmp_path}/code.tgz"]
    assert gcloud_verb(push) == "scp" and push[5] == f"{tmp_path}/code.tgz" and "--worker=all" in push
    assert gcloud_verb(setup) == "ssh" and "--worker=all" in setup and "tpu/setup.sh" in flag(setup, "command")
    assert mkdir == ["mkdir", "-p", f"{tmp_path}/logs"]
    assert gcloud_verb(run) == "ssh" and "--worker=all" in run
    assert flag(run, "output-directory") == f"{tmp_path}/logs"  # one log file per worker, written locally
    remote = shlex.split(flag(run, "command"))
    assert remote[:3] == ["cd", "~/genrm-jax", "&&"]
    assert remote[3:8] == ["GENRM_JAX_MULTIHOST=1", "python3", "-m", "experiments.star_dpo",
                           "--config=experiments/configs/star_dpo.py:paper"]
    assert remote[8] == SPACED  # quoted twice (local shell line, remote shell) and still one argument
    assert gcloud_verb(fetch) == "scp" and "--worker=0" in fetch and "genrm:genrm-jax/runs/x" in fetch
    assert gcloud_verb(delete) == "delete" and delete[5] == "genrm" and "--quiet" in delete


@pytest.mark.parametrize("extra, creates, deletes", [((), True, True), (("--keep",), True, False),
                                                     (("--existing",), False, False)])
def test_tpu_create_and_delete_as_asked(tmp_path, extra, creates, deletes):
    verbs = [gcloud_verb(shlex.split(line)) for line in dry_lines("tpu", *tpu_args(tmp_path, *extra))]
    assert ("create" in verbs) == creates and verbs[0 if creates else 1] == ("create" if creates else "scp")
    assert ("delete" in verbs) == deletes and (verbs[-1] == "delete") == deletes


def test_tpu_version_follows_the_generation(tmp_path):
    args = tpu_args(tmp_path)
    args[2] = "--accelerator=v5p-8"
    create = shlex.split(dry_lines("tpu", *args)[0])
    assert flag(create, "version") == "v2-alpha-tpuv5"


def fake_tool(bin_dir, name, log, fail_when=""):
    """An executable `name` that appends its argv (JSON) to `log` and exits 1 when an argument contains
    `fail_when` (when given)."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"""#!{sys.executable}
import json, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(1 if {fail_when!r} and any({fail_when!r} in a for a in sys.argv[1:]) else 0)
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def recorded(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_tpu_real_run_deletes_the_slice_after_a_failure(tmp_path):
    log = tmp_path / "gcloud.jsonl"
    fake_tool(tmp_path / "bin", "gcloud", log, fail_when="GENRM_JAX_MULTIHOST=1")  # the experiment fails
    out = launch("tpu", *tpu_args(tmp_path), path_prefix=tmp_path / "bin")
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().startswith("error: command failed with status 1: gcloud compute tpus tpu-vm ssh")
    verbs = [argv[3] for argv in recorded(log)]  # argv after "gcloud": compute tpus tpu-vm VERB
    assert verbs == ["create", "scp", "ssh", "ssh", "scp", "delete"]
    assert os.path.getsize(tmp_path / "code.tgz") > 0  # the checkout really was packed
    with tarfile.open(tmp_path / "code.tgz") as tar:
        names = tar.getnames()
    assert "tpu/setup.sh" in names and "launchers/tpu.py" in names and not any(n.startswith(".venv") for n in names)


def test_tpu_real_run_success(tmp_path):
    log = tmp_path / "gcloud.jsonl"
    fake_tool(tmp_path / "bin", "gcloud", log)
    out = launch("tpu", *tpu_args(tmp_path, "--keep"), path_prefix=tmp_path / "bin")
    assert out.returncode == 0, out.stderr
    assert [argv[3] for argv in recorded(log)] == ["create", "scp", "ssh", "ssh", "scp"]
    assert (tmp_path / "logs").is_dir()


def test_pack_takes_what_git_sees(tmp_path):
    from launchers import pack

    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo,  # noqa: E731
                                    check=True, capture_output=True)
    git("init", "-q")
    for name in ("kept.py", "deleted.py", ".gitignore"):
        (repo / name).write_text("ignored/\n" if name == ".gitignore" else "x\n")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    (repo / "deleted.py").unlink()
    (repo / "new.py").write_text("x\n")
    (repo / "ignored").mkdir()
    (repo / "ignored" / "big.bin").write_text("x\n")
    assert pack.pack(str(tmp_path / "a.tgz"), str(repo)) == 3
    with tarfile.open(tmp_path / "a.tgz") as tar:
        assert sorted(tar.getnames()) == [".gitignore", "kept.py", "new.py"]


def test_gpu_one_node(tmp_path):
    lines = dry_lines("gpu", "--install", *EXPERIMENT)
    assert lines[0] == f"cd {shlex.quote(REPO)}"
    assert [shlex.split(l)[:3] for l in lines[1:4]] == [["python3", "-m", "venv"], [".venv/bin/pip", "install", "-q"],
                                                        [".venv/bin/pip", "install", "-q"]]
    assert shlex.split(lines[2])[-1] == ".[cuda]"
    run = shlex.split(lines[4])
    assert run[:4] == ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", ".venv/bin/python", "-m"]
    assert run[4:] == EXPERIMENT[1:]
    assert len(lines) == 5


def sbatch_directives(script):
    return dict(line[len("#SBATCH --"):].split("=", 1) for line in script.splitlines() if line.startswith("#SBATCH"))


def test_gpu_slurm_script(tmp_path):
    logs = str(tmp_path / "slurm")
    out = "\n".join(dry_lines("gpu", "--nodes=4", "--gpus_per_node=8", "--partition=a100", "--time=8:00:00",
                              f"--logs={logs}", *EXPERIMENT))
    script = out.split(f"# {logs}/genrm-jax.sbatch:\n")[1].split("\nsbatch ")[0]
    d = sbatch_directives(script)
    assert (d["nodes"], d["ntasks-per-node"], d["gpus-per-node"]) == ("4", "8", "8")  # one process per GPU
    assert (d["partition"], d["time"]) == ("a100", "8:00:00")
    assert "export GENRM_JAX_MULTIHOST=1" in script.splitlines()[len(d) + 3]
    srun = shlex.split(script.splitlines()[-1])
    assert srun[0] == "srun" and srun[2:5] == [".venv/bin/python", "-m", "experiments.star_dpo"]
    assert SPACED in srun and "gpus-per-task" not in script  # every task sees its node's GPUs (see gpu.py)
    assert out.splitlines()[-1] == f"sbatch {logs}/genrm-jax.sbatch"


def test_gpu_slurm_real_submission(tmp_path):
    log = tmp_path / "sbatch.jsonl"
    fake_tool(tmp_path / "bin", "sbatch", log)
    out = launch("gpu", "--nodes=2", f"--logs={tmp_path}/slurm", *EXPERIMENT, path_prefix=tmp_path / "bin")
    assert out.returncode == 0, out.stderr
    (script_path,), = recorded(log)
    script = open(script_path).read()
    assert sbatch_directives(script)["nodes"] == "2" and script.startswith("#!/bin/bash\n")


@pytest.mark.parametrize("module, args, message", [
    ("tpu", ["--zone=z", "--accelerator=v4-8", "--", "experiments.genrm"], "required: --name"),
    ("tpu", ["--name=a", "--zone=z", "--accelerator=v4-8", "--", "experiments.nope"], "unknown experiment module"),
    ("tpu", ["--name=a", "--zone=z", "--accelerator=v9-8", "--", "experiments.genrm"], "unknown TPU generation"),
    ("tpu", ["--name=a", "--zone=z", "--accelerator=v4-8"], "no experiment given"),
    ("gpu", ["--nodes=0", "--", "experiments.genrm"], "--nodes=0"),
    ("gpu", ["--", "genrm_jax.plan"], "unknown experiment module"),
    ("gpu", ["--", "experiments.genrm", "--dry_run"], "--dry_run belongs before"),
])
def test_bad_input_is_one_line(module, args, message):
    out = launch(module, "--dry_run", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith("error: ") and message in out.stderr
