"""Running experiments in subprocesses for the tests: the environment (repository on the path, a JAX compilation
cache shared by the session's runs), the command line, a run with its log, a SIGKILL at a chosen moment, and the
strict-JSON readers for what the runs wrote."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "experiments", "configs")


def strict_json(text):
    def bad(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=bad)


def jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [strict_json(x) for x in f.read().splitlines() if x.strip()]


def environment():
    """The subprocesses' environment: the repository on the path and a persistent JAX compilation cache in the
    tests' GENRM_JAX_HOME (conftest), so that the tiny model's computations compile once, not once per run and
    iteration (the first session fills it)."""
    cache = os.path.join(os.environ["GENRM_JAX_HOME"], "jax-compilation-cache")
    os.makedirs(cache, exist_ok=True)
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def command(module, preset, workdir, overrides=()):
    return [sys.executable, "-m", f"experiments.{module}", "--workdir", str(workdir),
            f"--config={CONFIGS}/{module}.py:{preset}", *overrides]


def run(cmd, env, log, timeout=420):
    with open(log, "w") as out:
        r = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    return r.returncode


def tail(log, n=4000):
    with open(log, errors="replace") as f:
        return f.read()[-n:]


def config(module, preset, overrides=()):
    """The experiment's config with `--config.x.y=v` overrides applied as the command line would."""
    import importlib

    c = importlib.import_module(f"experiments.configs.{module}").get_config(preset)
    for o in overrides:
        key, value = o[len("--config."):].split("=", 1)
        *groups, leaf = key.split(".")
        node = c
        for g in groups:
            node = node[g]
        kind = type(node[leaf])
        node[leaf] = {"true": True, "false": False}[value.lower()] if kind is bool else kind(value)
    return c


def kill_when(cmd, env, log, ready, timeout=300):
    """Starts cmd, polls ready() and kills the process with SIGKILL as soon as it holds; returns what ready()
    returned (truthy). The process gets its own copy of the compilation cache (JAX writes entries in place: a
    kill could leave one cut short in the shared cache)."""
    cache = log + ".jax-cache"
    shutil.copytree(env["JAX_COMPILATION_CACHE_DIR"], cache)
    env = {**env, "JAX_COMPILATION_CACHE_DIR": cache}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    t = time.time()
    try:
        while True:
            got = ready()
            if got:
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait(timeout=60) == -signal.SIGKILL
                return got
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the kill:\n" + tail(log)
            assert time.time() - t < timeout, "timed out waiting for the moment to kill"
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0
