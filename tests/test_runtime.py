"""The allocator and dispatch settings of genrm_jax/runtime.py: applied by entry points, never by `import genrm_jax`.

Each check runs in a fresh interpreter: these settings are process-wide, and JAX fixes its dispatch mode when it
creates its CPU client, so the pytest process (already running JAX) can neither observe nor undo them.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from genrm_jax import runtime

glibc_only = pytest.mark.skipif(runtime._libc() is None, reason="needs glibc's mallopt / mallinfo2")

# What an embedding program imports: the package and its main modules.
MODULES = ("genrm_jax", "genrm_jax.models.llama", "genrm_jax.sampling", "genrm_jax.sharding", "genrm_jax.train",
           "genrm_jax.losses", "genrm_jax.finetune", "genrm_jax.generate", "genrm_jax.io", "genrm_jax.judge.api",
           "genrm_jax.star.loop", "genrm_jax.evaluation", "genrm_jax.checkpoint", "genrm_jax.cli")

# Prints what runtime.apply() changes, as JSON: the environment, JAX's CPU dispatch mode, whether a large malloc
# is served by mmap (glibc's default) or from the heap, and whether the heap is advised huge pages.
_PROBE = """
import json, os, sys
from genrm_jax import runtime

def state():
    out = {"env": dict(os.environ)}
    import jax
    out["async_dispatch"] = bool(jax.config.values["jax_cpu_enable_async_dispatch"])
    libc = runtime._libc()
    if libc is not None and hasattr(libc, "mallinfo2"):
        before = libc.mallinfo2().hblks
        block = libc.malloc(256 << 20)
        out["large_malloc_mmapped"] = libc.mallinfo2().hblks > before
        libc.free(block)
    with open("/proc/self/smaps") as f:
        smaps = f.read().splitlines()
    heap = [i for i, line in enumerate(smaps) if line.endswith("[heap]")]
    out["heap_huge_pages"] = any(" hg" in next(l for l in smaps[i + 1:] if l.startswith("VmFlags:")) for i in heap)
    return out
"""


def _run(code: str, **env) -> dict:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GENRM_JAX_") or k == "GENRM_JAX_HOME"}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_PROBE) + textwrap.dedent(code)], check=True,
                         capture_output=True, text=True, env=full_env, cwd=os.path.dirname(os.path.dirname(__file__)))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _huge_pages_expected() -> bool:
    thp = runtime._read("/sys/kernel/mm/transparent_hugepage/enabled")  # "" where the kernel has none
    strict_overcommit = runtime._read("/proc/sys/vm/overcommit_memory").strip() == "2"
    return bool(thp) and "[never]" not in thp and not strict_overcommit


@glibc_only
def test_import_changes_nothing_and_apply_does():
    got = _run(f"""
        env = dict(os.environ)
        import importlib
        for name in {MODULES!r}:
            importlib.import_module(name)
        imported = state()
        imported["env_changed"] = sorted(k for k in set(env) | set(imported.pop("env"))
                                          if env.get(k) != os.environ.get(k))
        runtime.apply()
        applied = state()
        applied.pop("env")
        print(json.dumps({{"imported": imported, "applied": applied}}))
    """)
    assert got["imported"] == {"env_changed": [], "async_dispatch": True, "large_malloc_mmapped": True,
                               "heap_huge_pages": False}
    # the probe can tell: after apply() every setting has flipped
    assert got["applied"] == {"async_dispatch": False, "large_malloc_mmapped": False,
                              "heap_huge_pages": _huge_pages_expected()}


@glibc_only
def test_apply_can_be_turned_off():
    for env, huge in (({"GENRM_JAX_SYSTEM_MALLOC": "1"}, False), ({"GENRM_JAX_HUGE_PAGES": "0"}, False)):
        got = _run("runtime.apply(); s = state(); s.pop('env'); print(json.dumps(s))", **env)
        system = "GENRM_JAX_SYSTEM_MALLOC" in env
        assert got == {"async_dispatch": system, "large_malloc_mmapped": system, "heap_huge_pages": huge}, env


@glibc_only
def test_release_fragments_acts_only_when_the_heap_grew():
    got = _run("""
        import numpy as np
        runtime.apply()
        results = [runtime.release_fragments(), runtime.release_fragments()]  # the second: nothing new
        # bigger than all the free chunks below the heap's top together, so it must extend the in-use part of
        # the heap; np.empty leaves the pages untouched, so this costs no RSS
        info = runtime._libc().mallinfo2()
        big = np.empty(info.fordblks - info.keepcost + (64 << 20), np.uint8)
        results += [runtime.release_fragments(), runtime.release_fragments()]
        print(json.dumps(results))
    """)
    assert got[1:] == [False, True, False]


@glibc_only
@pytest.mark.skipif(not _huge_pages_expected(), reason="transparent huge pages are off here, or strict overcommit")
def test_huge_page_heap_reserves_address_space():
    got = _run("""
        runtime.apply()
        start, end = runtime._heap_span()
        print(json.dumps(end - start))
    """)
    assert got >= 1 << 30  # the reservation: address space, not memory
