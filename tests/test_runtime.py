"""The allocator and dispatch settings applied on import (genrm_jax/runtime.py)."""
import os
import sys

import numpy as np
import pytest

import genrm_jax  # noqa: F401  (applies the settings)
from genrm_jax import runtime

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")


@glibc_only
def test_keep_freed_memory_applies_and_can_be_turned_off(monkeypatch):
    assert runtime.keep_freed_memory() is True
    monkeypatch.setenv("GENRM_JAX_SYSTEM_MALLOC", "1")
    assert runtime.keep_freed_memory() is False
    assert runtime.dispatch_on_caller_thread() is False
    assert runtime.release_fragments() is False


def test_cpu_dispatch_is_synchronous_after_import():
    import jax

    assert jax.config.values["jax_cpu_enable_async_dispatch"] is False


@glibc_only
def test_release_fragments_acts_only_when_the_heap_grew():
    runtime.release_fragments()
    assert runtime.release_fragments() is False  # nothing new since the last call
    # bigger than all the free chunks below the heap's top together, so it must extend the in-use part of the
    # heap; np.empty leaves the pages untouched, so this costs no RSS
    info = runtime._libc().mallinfo2()
    big = np.empty(info.fordblks - info.keepcost + (64 << 20), np.uint8)
    assert runtime.release_fragments() is True
    assert runtime.release_fragments() is False
    del big


def _huge_pages_expected() -> bool:
    if os.environ.get("GENRM_JAX_HUGE_PAGES") == "0" or os.environ.get("GENRM_JAX_SYSTEM_MALLOC") == "1":
        return False
    thp = runtime._read("/sys/kernel/mm/transparent_hugepage/enabled")  # "" where the kernel has none
    strict_overcommit = runtime._read("/proc/sys/vm/overcommit_memory").strip() == "2"
    return bool(thp) and "[never]" not in thp and not strict_overcommit


@glibc_only
@pytest.mark.skipif(not _huge_pages_expected(),
                    reason="transparent huge pages are off here, strict overcommit, or opted out")
def test_heap_is_advised_huge_pages_on_import(monkeypatch):
    with open("/proc/self/smaps") as f:
        smaps = f.read().splitlines()
    heap = next(i for i, line in enumerate(smaps) if line.endswith("[heap]"))
    flags = next(line for line in smaps[heap + 1:] if line.startswith("VmFlags:"))
    assert " hg" in flags  # madvise(MADV_HUGEPAGE) was applied to the heap
    start, end = runtime._heap_span()
    assert end - start >= 1 << 30  # the reservation: address space, not memory
    monkeypatch.setenv("GENRM_JAX_SYSTEM_MALLOC", "1")
    assert runtime.huge_page_heap() is False
