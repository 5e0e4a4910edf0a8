"""Runs an experiment on a Cloud TPU VM slice, from creation to deletion.

    python -m launchers.tpu --name=genrm --zone=us-central2-b --accelerator=v4-32 [--spot] [--dry_run] \
        -- experiments.star_dpo --config=experiments/configs/star_dpo.py:paper --workdir=runs/star_dpo

Steps (--dry_run prints them, one command a line): create the slice; pack this checkout (launchers/pack.py:
tracked and untracked-but-not-ignored files) and copy it to every worker; run tpu/setup.sh on every worker
(jax[tpu], the package, the embedded model); run the experiment on every worker at once with
GENRM_JAX_MULTIHOST=1 (genrm_jax.distributed connects them), gcloud writing each worker's output to
LOGS/<worker>.log; then, whether the run succeeded or not, copy worker 0's --workdir (reports, the exported
judge) into LOGS and delete the slice (unless --keep).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

if __package__ in (None, ""):  # `python launchers/tpu.py` as well as `python -m launchers.tpu`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launchers.common import REPO, LaunchError, Parser, Runner, experiment_argv, main

REMOTE_DIR = "genrm-jax"  # under the workers' home directory
REMOTE_ARCHIVE = "/tmp/genrm-jax.tgz"

# Default VM image per TPU generation (gcloud's --version; see Cloud TPU's "TPU software versions").
VERSIONS = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
            "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}


def parse(argv: list[str]):
    p = Parser(prog="python -m launchers.tpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--accelerator", required=True, help="accelerator type, e.g. v4-32, v5p-8, v5litepod-16")
    p.add_argument("--version", help="TPU software version (default: by generation, see VERSIONS)")
    p.add_argument("--project", help="Google Cloud project (default: gcloud's configured one)")
    p.add_argument("--spot", action="store_true", help="a Spot slice: cheaper, may be preempted")
    p.add_argument("--existing", action="store_true", help="use an existing slice: neither create nor delete it")
    p.add_argument("--keep", action="store_true", help="do not delete the slice at the end")
    p.add_argument("--no_fetch", action="store_true", help="do not copy worker 0's --workdir back")
    p.add_argument("--logs", help="local directory for the workers' logs and the fetched workdir "
                                  "(default: runs/tpu/NAME)")
    p.add_argument("--archive", help=f"local path of the packed checkout (default: /tmp/genrm-jax-NAME.tgz)")
    p.add_argument("--dry_run", action="store_true", help="print the commands instead of running them")
    p.add_argument("experiment", nargs="...", help="-- experiments.NAME ARGS...")
    args = p.parse_args(argv)
    args.experiment = experiment_argv(args.experiment)
    generation = args.accelerator.split("-")[0]
    if args.version is None:
        if generation not in VERSIONS:
            raise LaunchError(f"--accelerator={args.accelerator}: unknown TPU generation {generation!r}; "
                              f"expected one of {', '.join(VERSIONS)} or pass --version")
        args.version = VERSIONS[generation]
    args.logs = args.logs or os.path.join("runs", "tpu", args.name)
    args.archive = args.archive or f"/tmp/genrm-jax-{args.name}.tgz"
    return args


def workdir_of(experiment: list[str]) -> str | None:
    """The experiment's --workdir (`--workdir=DIR` or `--workdir DIR`), None when absent."""
    for i, arg in enumerate(experiment):
        if arg.startswith("--workdir="):
            return arg.split("=", 1)[1]
        if arg == "--workdir" and i + 1 < len(experiment):
            return experiment[i + 1]
    return None


def launch(args, runner: Runner) -> None:
    def gcloud(*words):
        return (["gcloud", "compute", "tpus", "tpu-vm", *words, f"--zone={args.zone}"]
                + ([f"--project={args.project}"] if args.project else []))

    name = args.name
    if not args.existing:
        # Outside the try: a failed create (say, the name is taken) must not delete what is there.
        runner.run(gcloud("create", name, f"--accelerator-type={args.accelerator}", f"--version={args.version}",
                          *(["--spot"] if args.spot else [])))
    try:
        runner.run([sys.executable, os.path.join(REPO, "launchers", "pack.py"), args.archive])
        runner.run(gcloud("scp", args.archive, f"{name}:{REMOTE_ARCHIVE}", "--worker=all"))
        runner.run(gcloud("ssh", name, "--worker=all", f"--command=mkdir -p ~/{REMOTE_DIR} && tar -xzf "
                          f"{REMOTE_ARCHIVE} -C ~/{REMOTE_DIR} && bash ~/{REMOTE_DIR}/tpu/setup.sh"))
        runner.run(["mkdir", "-p", args.logs])  # gcloud's --output-directory must exist
        experiment = shlex.join(["python3", "-m", *args.experiment])
        runner.run(gcloud("ssh", name, "--worker=all", f"--output-directory={args.logs}",
                          f"--command=cd ~/{REMOTE_DIR} && GENRM_JAX_MULTIHOST=1 {experiment} 2>&1"))
    finally:
        try:
            workdir = workdir_of(args.experiment)
            if workdir and not args.no_fetch:
                # Worker 0 is JAX process 0, the one that writes reports and the export (distributed.py).
                remote = workdir if os.path.isabs(workdir) else f"{REMOTE_DIR}/{workdir}"
                runner.run(gcloud("scp", "--recurse", "--worker=0", f"{name}:{remote}", args.logs))
        except subprocess.CalledProcessError as e:
            print(f"warning: fetching the workdir failed (status {e.returncode})", file=sys.stderr, flush=True)
        finally:
            if not (args.keep or args.existing):
                runner.run(gcloud("delete", name, "--quiet"))


if __name__ == "__main__":
    def _run():
        args = parse(sys.argv[1:])
        launch(args, Runner(args.dry_run))
    main(_run)
