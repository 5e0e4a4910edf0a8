"""The run directory: one experiment's config, finished stages, metrics and resumable JSONL outputs.

    <workdir>/config.json       the resolved config; a second run in the same directory must have the same one
    <workdir>/stages/<name>.json  one file per finished stage (its result): a rerun skips what is there
    <workdir>/metrics.jsonl     one line per logged event (training steps, iterations, evaluations)
    <workdir>/.lock             held (flock) by the process running the experiment: a second one is refused,
                                naming the first's pid; the kernel releases it when that process ends, even by kill -9

Resume has three levels: finished stages are skipped by their marker, training resumes from its orbax
checkpoint (data iterator included), and JSONL outputs skip the record ids already written (`append_jsonl`
after `read_resumable`). Only the main process (jax.process_index() == 0) writes: the writers here do nothing on
the others (`open_output` gives them a file that discards), while orbax checkpoints are written by every process,
each its own shards. `config.mesh` may differ between a run and its resumption (another slice of a pod): it says
where the run computes, not what.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from typing import Any, Iterable

from genrm_jax import config_util, distributed

LOCK_FILE = ".lock"


class ConfigMismatchError(ValueError):
    """The directory holds a run with another config; the message names the differing keys."""


class RunDirectoryError(ValueError):
    """The run directory is in use by another process, or cannot be written; the message says which and why."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf of nested dicts (lists and tuples are leaves)."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def strict_json(value: Any) -> Any:
    """`value` with NaN/inf as None and numpy scalars/arrays as Python values: `json.dumps(allow_nan=False)` works."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes strict JSON through a temporary file and a rename: a kill never leaves half a file (main process
    only)."""
    write_text_atomic(path, json.dumps(strict_json(obj), indent=2, allow_nan=False))


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` through a temporary file and a rename: a kill never leaves half a file, and a failure (a
    full disk, `path` a directory) leaves no temporary file behind (main process only)."""
    if not is_main_process():
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_main_process() -> bool:
    return distributed.is_main_process()


def open_output(path: str, mode: str = "a"):
    """`open(path, mode, encoding="utf-8")` on the main process; elsewhere a file that discards what is written,
    so code that writes reports or samples runs unchanged on every process of a multi-host run."""
    if not is_main_process():
        return open(os.devnull, mode.replace("+", ""), encoding="utf-8")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return open(path, mode, encoding="utf-8")


# ------------------------------------------------------------------------------------------ resumable JSONL


def read_resumable(path: str, key: str = "id") -> dict[str, dict]:
    """{row[key]: row} of a JSONL file that a killed job may have cut short: an unfinished last line is removed
    from the file (the job redoes that record). A line that is not JSON with `key` raises, naming file and line."""
    if not os.path.exists(path):
        return {}
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
    out: dict[str, dict] = {}
    for n, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[row[key]] = row
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a result line with field {key!r} ({e})") from None
    return out


def append_jsonl(f, row: dict) -> None:
    """One strict-JSON line, flushed: what is on disk is always whole lines plus at most one cut line."""
    f.write(json.dumps(strict_json(row), ensure_ascii=False, allow_nan=False) + "\n")
    f.flush()


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    """The whole file at once, through a temporary file (main process only)."""
    if not is_main_process():
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(strict_json(row), ensure_ascii=False, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------------------ run


class Run:
    """A run directory for `config` (a dict or ConfigDict). Refuses an invalid config (config_util.validate), a
    directory that holds another config, and one that another process is running in (the main process holds
    <workdir>/.lock while this process lives)."""
    def __init__(self, workdir: str, config: Any, *, main: bool | None = None):
        self.dir = os.path.abspath(workdir)
        self.config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        check_config(workdir, self.config)  # before JAX starts: a refusal is the only output
        self.main = is_main_process() if main is None else main
        if self.main:
            lock(self.dir)
            check_config(workdir, self.config)  # again under the lock: a process that just finished may have bound it
        path = self.path("config.json")
        if self.main and (not os.path.exists(path) or _only_config(self.dir)):
            write_json_atomic(path, self.config)

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def _stage_path(self, name: str) -> str:
        return self.path("stages", f"{name}.json")

    def done(self, name: str) -> bool:
        return os.path.exists(self._stage_path(name))

    def result(self, name: str) -> Any:
        with open(self._stage_path(name)) as f:
            return json.load(f)

    def finish(self, name: str, result: Any = None) -> Any:
        """Marks stage `name` finished with its (JSON) result; returns the result as a rerun will read it."""
        result = strict_json(result if result is not None else {})
        if self.main:
            write_json_atomic(self._stage_path(name), result)
        return result

    def log(self, row: dict) -> None:
        if self.main:
            os.makedirs(self.dir, exist_ok=True)
            with open(self.path("metrics.jsonl"), "a") as f:
                append_jsonl(f, row)


def check_config(workdir: str, config: Any) -> None:
    """Raises config_util.ConfigValueError, naming the key, for a field out of its range, and ConfigMismatchError,
    naming the differing keys, when `workdir` holds a run with another config. Writes nothing and reads only
    config.json: call it before loading data or starting JAX, so that a refusal is one line and the corrected
    command runs in the same directory."""
    config_util.validate(config)
    path = os.path.join(os.path.abspath(workdir), "config.json")
    if not os.path.exists(path) or _only_config(workdir):
        return  # a run that stopped before writing anything (a bad model path, say) does not bind its directory
    with open(path) as f:
        old = json.load(f)
    diff = differing_keys(old, strict_json(config.to_dict() if hasattr(config, "to_dict") else dict(config)))
    diff = {k: v for k, v in diff.items() if not k.startswith(_WHERE_NOT_WHAT)}
    if diff:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:12])
        raise ConfigMismatchError(
            f"{os.path.abspath(workdir)} holds a run with another config ({len(diff)} differing keys: {shown}). "
            "Rerun with the same config to resume it, or choose another --workdir.")


# Config groups that say where a run computes (or finds what other runs share), not what it computes: a run may
# resume with other values.
_WHERE_NOT_WHAT = ("mesh.", "device_memory_gib", "eval.shared_dir")


def _only_config(workdir: str) -> bool:
    """Whether `workdir` holds config.json and nothing else but empty folders (and the lock file)."""
    for root, _, files in os.walk(workdir):
        if any(not (root == os.path.abspath(workdir) and f in ("config.json", LOCK_FILE)) for f in files):
            return False
    return True


# ------------------------------------------------------------------------------------------------ lock

_HELD: dict[str, int] = {}  # run directory -> descriptor of its lock file, flock-ed by this process


def lock(workdir: str) -> None:
    """Takes <workdir>/.lock (an exclusive flock, its holder's pid written in it) for this process's lifetime, or
    raises RunDirectoryError naming the process that holds it (or why the directory cannot be written). Taking it
    again in the same process is a no-op. The kernel drops a flock when its process ends, however it ends, so a
    killed run never leaves its directory locked."""
    workdir = os.path.abspath(workdir)
    path = os.path.join(workdir, LOCK_FILE)
    fd = _HELD.get(workdir)
    if fd is not None:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return
        unlock(workdir)  # the directory was removed and made again: lock the new file
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunDirectoryError(f"{workdir}: cannot write to the run directory ({e.strerror}); choose another "
                                "--workdir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirectoryError(f"{workdir} is in use by process {holder} (it holds {path}); wait for it to end, "
                                "or choose another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[workdir] = fd


def unlock(workdir: str) -> None:
    """Releases this process's lock on `workdir` (if it holds one)."""
    fd = _HELD.pop(os.path.abspath(workdir), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def differing_keys(old: dict, new: dict) -> dict[str, tuple]:
    """{dotted key: (old value, new value)} where two configs differ (a missing key shows as None)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
