"""What this machine can do, measured the same way by every benchmark: matmul peak, memory bandwidth, peak RSS."""
from __future__ import annotations

import time


def best_seconds(fn, arg, reps: int) -> float:
    fn(arg).block_until_ready()  # compile
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn(arg).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak_flops(n: int = 2048, reps: int = 5) -> float:
    """fp32 FLOP/s of one n^3 matmul, best of `reps`."""
    import jax
    import jax.numpy as jnp

    return 2 * n ** 3 / best_seconds(jax.jit(lambda x: x @ x), jnp.ones((n, n), jnp.float32), reps)


def memory_bandwidth(nbytes: int = 1 << 30, reps: int = 3) -> float:
    """Read bandwidth in bytes/s: the sum of a 1 GiB array."""
    import jax
    import jax.numpy as jnp

    return nbytes / best_seconds(jax.jit(jnp.sum), jnp.ones((nbytes // 4,), jnp.float32), reps)


def peak_rss_gb() -> float:
    # VmHWM, not ru_maxrss: a process started by fork inherits its parent's ru_maxrss.
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024 ** 2
