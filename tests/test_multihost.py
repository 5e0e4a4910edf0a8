"""Two processes on this machine (jax.distributed over localhost, gloo CPU collectives; 2 devices each) train
like one process with 4 devices, and only process 0 writes reports, samples and the export (tests/multihost.py
is one process)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 600  # seconds for one run of tests/multihost.py: about 40 s on an idle 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    """The test's environment without JAX's settings; the persistent compilation cache stays for the two-process
    run (distributed.initialize must turn it off) and is left out of the one-process reference: this DPO step on a
    4-device CPU mesh, read back from the cache, waits forever in a collective (jax 0.10.2; docs/scale-out.md)."""
    keep = "JAX_COMPILATION_CACHE_DIR" if "JAX_PROCESS_ID" in extra else None
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k == keep}
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}


def _start(out, env):
    """Starts one process writing to files beside OUT: with pipes, a process whose pipe is not being read blocks
    once it has written 64 KiB, and the others then wait for it at their next collective."""
    logs = tuple(f"{out}.{env.get('JAX_PROCESS_ID', '0')}.{name}" for name in ("stdout", "stderr"))
    with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "multihost.py"), str(out)], env=env,
                                cwd=os.path.dirname(HERE), stdout=stdout, stderr=stderr)
    proc.logs = logs
    return proc


def _output(proc) -> tuple[str, str]:
    """(stdout, stderr) of a finished process."""
    texts = []
    for path in proc.logs:
        with open(path) as f:
            texts.append(f.read())
    return texts[0], texts[1]


def _finish(procs, timeout=TIMEOUT):
    """Each process's JSON line. When one fails or runs past `timeout`, every process still running is asked for
    its Python stacks (SIGUSR1, tests/multihost.py) and stopped, and the error shows each one's stderr."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            break
        if proc.returncode != 0:
            break
    else:
        return [json.loads([line for line in _output(p)[0].splitlines() if line.startswith("{")][-1]) for p in procs]
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)
    time.sleep(2)
    report = []
    for i, proc in enumerate(procs):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out, err = _output(proc)
        report.append(f"--- process {i}: exit {proc.returncode}\n{out[-2000:]}\n{err[-6000:]}")
    raise AssertionError("\n".join(report))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("multihost")
    port = _free_port()
    two = _finish([_start(base / "two", _env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                             JAX_PROCESS_ID=str(i))) for i in range(2)])
    (one,) = _finish([_start(base / "one", _env(4))])
    return base, two, one


def _export(path):
    from safetensors.numpy import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def test_two_processes_train_like_one(runs):
    base, two, one = runs
    assert [r["process"] for r in two] == [0, 1] and {r["processes"] for r in two} == {2}
    assert one["processes"] == 1 and one["steps"] == two[0]["steps"] == 2
    for r in two:
        assert abs(r["final_loss"] - one["final_loss"]) <= 1e-5, (r, one)
    a, b = _export(base / "two" / "export"), _export(base / "one" / "export")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0, err_msg=k)


def test_processes_compile_for_themselves(runs):
    """A program one process wrote to the persistent compilation cache (conftest sets one) and the other read back
    hangs in its first gloo collective: distributed.initialize turns the cache off on CPU."""
    _, two, _ = runs
    assert [r["compilation_cache"] for r in two] == [False, False], two


def test_only_process_0_writes(runs):
    base, _, _ = runs
    written = sorted(os.listdir(base / "two"))
    assert "report_by_0.json" in written and "report_by_1.json" not in written, written
    assert "samples_by_0.jsonl" in written and "samples_by_1.jsonl" not in written, written
    with open(base / "two" / "fit" / "metrics.jsonl") as f:
        assert len(f.read().splitlines()) == 2  # one line per step, not one per process
    assert sorted(os.listdir(base / "two" / "fit" / "ckpt")) == ["1", "2"] or \
        sorted(os.listdir(base / "two" / "fit" / "ckpt")) == ["2"]


def test_greedy_samples_and_scores_agree_across_processes(runs):
    _, two, one = runs
    assert isinstance(one["samples"], dict), one["samples"]
    assert isinstance(two[0]["samples"], dict), two[0]["samples"]
    assert two[0]["samples"]["tokens"] == two[1]["samples"]["tokens"] == one["samples"]["tokens"], (two, one)
    for got in (two[0], two[1]):
        np.testing.assert_allclose(got["samples"]["scores"], one["samples"]["scores"], atol=1e-5)


def test_initialize_is_a_no_op_alone_and_names_a_missing_variable(monkeypatch):
    from genrm_jax import distributed

    for k in ("GENRM_JAX_MULTIHOST", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    distributed.initialize()  # one machine: nothing to connect
    assert distributed.is_main_process()
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID is not"):
        distributed.initialize()
