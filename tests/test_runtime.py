"""The allocator setting applied on import (genrm_jax/runtime.py)."""
import sys

import pytest

from genrm_jax import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keep_freed_memory_applies_and_can_be_turned_off(monkeypatch):
    assert runtime.keep_freed_memory() is True
    monkeypatch.setenv("GENRM_JAX_SYSTEM_MALLOC", "1")
    assert runtime.keep_freed_memory() is False
