"""Process-wide settings that XLA:CPU needs to run at speed: big buffers stay in glibc's heap between calls.

XLA:CPU allocates every executable's buffers afresh on each call, and page-faulting them in again is slow:
a standalone [10240, 576] x [576, 1536] fp32 matmul ran at 119 GFLOP/s that way against 153 with the memory
kept, and `x + 1` over 38 MB took 17.9 ms against 2.4 (2-core EPYC). What it takes to keep them:
- glibc serves large requests by `mmap` and frees them by `munmap`: `M_MMAP_MAX = 0` serves them from the heap;
- it trims a freed heap top above `M_TRIM_THRESHOLD` (the next call's buffers are usually right there):
  -1 turns that off;
- with JAX's default asynchronous CPU dispatch a call runs, and allocates, on an XLA worker thread, whose glibc
  arena cannot grow past 64 MB and `mmap`s anything larger whatever the settings. The SmolLM2 training step
  (4 x 512 tokens) allocates a 3 GB temporary buffer: 742,000 page faults and 1.9 s of kernel time in each
  13.5 s step. Synchronous dispatch runs the call on the caller's thread, in the main heap: no faults, 12.6 s.
  On CPU the host and the "device" share the cores, so asynchronous dispatch overlapped little anyway.
- the first call of a program (compilation included) can leave its big buffer boxed in by allocations made
  after it, and an aligned request of the same size does not fit the freed chunk again (`posix_memalign`
  asks for alignment slack), so the next call takes a second one from the top: 3 GB more RSS, kept for good.
  `release_fragments()` after a call that grew the heap gives back the pages of free chunks other than the
  heap top, where the big buffer then lands and stays (the training loop calls it after every step; it costs
  a few ms, and nothing while the heap does not grow). Peak RSS of the training benchmark: 5.4-5.7 GB, against
  8.6 GB without it when that happens (in about half the runs).

Applied when `genrm_jax` is imported; dispatch is fixed when JAX creates its CPU client, so import genrm_jax
before running JAX computations. Set GENRM_JAX_SYSTEM_MALLOC=1 to leave the allocator and dispatch alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_MAX = -4
_NEVER_TRIM = -1  # mallopt(M_TRIM_THRESHOLD, -1) turns automatic trimming off
_KEEP_TOP = 1 << 60  # malloc_trim's pad: how much of the heap top to keep (all of it)


def _opted_out() -> bool:
    return os.environ.get("GENRM_JAX_SYSTEM_MALLOC") == "1"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc, or None (not Linux, or a libc without mallopt/malloc_trim such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (AttributeError where missing)
    except (OSError, AttributeError):
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.restype = _MallInfo2
    return libc


def keep_freed_memory() -> bool:
    """Serve large allocations from glibc's heap and never trim it automatically.
    Returns False where that is not possible (no glibc) or when opted out."""
    libc = None if _opted_out() else _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def dispatch_on_caller_thread() -> bool:
    """Turn off JAX's asynchronous CPU dispatch, so that a call's big buffers come from the main heap.
    Only the CPU client reads this setting: GPU and TPU dispatch are unchanged. False when opted out."""
    if _opted_out():
        return False
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


_heap_seen = 0  # heap size at the last release_fragments call


def release_fragments() -> bool:
    """When the heap has grown since the last call, give the kernel back the pages of free heap chunks other
    than the top (see the module docstring). Returns whether it did. In a steady state (the same buffers
    reused call after call) it does nothing: releasing a buffer that the next call reuses would fault it in
    again."""
    global _heap_seen
    libc = None if _opted_out() else _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return False
    heap = libc.mallinfo2().arena
    if heap <= _heap_seen:
        return False
    libc.malloc_trim(_KEEP_TOP)
    _heap_seen = libc.mallinfo2().arena
    return True


def apply() -> None:
    if keep_freed_memory():
        dispatch_on_caller_thread()
