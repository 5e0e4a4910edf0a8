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
- the heap is backed by 4 KiB pages unless it is advised otherwise (transparent huge pages are commonly set to
  `madvise`): every buffer that is released and reused faults in again 4 KiB at a time, and strided copies
  over GB-sized buffers miss the TLB. On huge pages the training step above took 12.5-12.9 s (24.0-25.1 s of
  CPU time) against 12.9-14.4 s (25.3-27.8 s) on small ones, some of those with 965,000 page faults.
  `huge_page_heap()` grows the heap once, at import, by half the physical memory of untouched address space
  (which costs no memory) and advises huge pages on it, so the buffers allocated later land on them: what
  glibc's `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` does, which cannot be set from inside a running process.

Nothing here runs on import: `apply()` is called by the entry points (`cli.run` for every experiment, the
benchmarks), never by library code, so a program that imports genrm_jax keeps its allocator and JAX's dispatch
mode. Dispatch is fixed when JAX creates its CPU client, so an entry point calls `apply()` before running JAX
computations. Set GENRM_JAX_SYSTEM_MALLOC=1 to leave the allocator and dispatch alone, or GENRM_JAX_HUGE_PAGES=0
to keep the rest but not the huge pages.
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
_MADV_HUGEPAGE = 14  # from linux/mman.h


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
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
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


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _heap_span() -> tuple[int, int] | None:
    """(start, end) of glibc's main heap, the `[heap]` mappings of /proc/self/maps (several once advised)."""
    spans = [tuple(int(a, 16) for a in line.split()[0].split("-"))
             for line in _read("/proc/self/maps").splitlines() if line.endswith("[heap]")]
    return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else None


def huge_page_heap(reserve: int | None = None) -> bool:
    """Grow the heap by `reserve` bytes of untouched address space (default: half the physical memory) and advise
    transparent huge pages on all of it. Needs `keep_freed_memory()` first: large requests must come from the
    heap, and freeing the reservation must not trim it away. Returns False where transparent huge pages are off,
    where strict overcommit accounting would charge the reservation as memory, or when opted out
    (GENRM_JAX_HUGE_PAGES=0 turns off only this)."""
    libc = None if _opted_out() or os.environ.get("GENRM_JAX_HUGE_PAGES") == "0" else _libc()
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    if libc is None or "[never]" in thp or not thp or _read("/proc/sys/vm/overcommit_memory").strip() == "2":
        return False
    if reserve is None:
        reserve = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    block = libc.malloc(reserve)
    if not block:
        return False
    libc.free(block)  # merges into the top of the heap, which stays (M_TRIM_THRESHOLD = -1)
    span = _heap_span()
    return span is not None and libc.madvise(span[0], span[1] - span[0], _MADV_HUGEPAGE) == 0


_heap_seen = 0  # the heap's in-use extent at the last release_fragments call


def release_fragments() -> bool:
    """When the heap's in-use extent (all but its free top) has grown since the last call, give the kernel back
    the pages of free heap chunks other than the top (see the module docstring). Returns whether it did. In a
    steady state (the same buffers reused call after call) it does nothing: releasing a buffer that the next
    call reuses would fault it in again."""
    global _heap_seen
    libc = None if _opted_out() else _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return False
    info = libc.mallinfo2()
    extent = info.arena - info.keepcost  # `huge_page_heap` makes the heap itself big from the start
    if extent <= _heap_seen:
        return False
    libc.malloc_trim(_KEEP_TOP)
    _heap_seen = extent
    return True


def apply() -> None:
    """All of the above, for an entry point (see the module docstring); a no-op where it is not possible."""
    if keep_freed_memory():
        huge_page_heap()
        dispatch_on_caller_thread()
