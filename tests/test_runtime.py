"""The allocator and dispatch settings applied on import (genrm_jax/runtime.py)."""
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
    # more than all the free memory the heap holds (earlier tests leave some, never trimmed), so it must grow;
    # np.empty leaves the pages untouched, so this costs no RSS
    free = runtime._libc().mallinfo2().fordblks
    big = np.empty(free + (64 << 20), np.uint8)
    del big
    assert runtime.release_fragments() is True
    assert runtime.release_fragments() is False
