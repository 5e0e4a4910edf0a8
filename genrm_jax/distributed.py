"""Multi-host start-up. Every host of a TPU pod (or GPU cluster) runs the same command; `cli.run` calls
`initialize()` before anything touches a device, so that jax.distributed connects the hosts first.

When: GENRM_JAX_MULTIHOST=1 (the launchers set it; on TPU pods and SLURM/Open MPI clusters JAX then finds the
coordinator itself), or JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID (any other cluster, or
several processes on one machine). Otherwise there is one process and nothing to do.
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def initialize() -> None:
    """Connects the processes when launched multi-process; a no-op on one machine, and when already connected."""
    if jax.distributed.is_initialized():
        return
    explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
    if os.environ.get("GENRM_JAX_MULTIHOST") != "1" and not explicit:
        return
    kwargs = {}
    if explicit:
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in os.environ]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
        kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    if os.environ.get("JAX_PLATFORMS", "").strip() == "cpu":
        # XLA:CPU has no cross-process collectives of its own: gloo (over TCP) does the all-reduces
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # A CPU program with collectives read back from the persistent compilation cache can wait forever in its
        # first collective (jax 0.10.2; docs/scale-out.md): every process compiles its own.
        if jax.config.jax_compilation_cache_dir:
            log.warning("multi-process CPU run: the persistent compilation cache is off (docs/scale-out.md)")
        jax.config.update("jax_enable_compilation_cache", False)
    jax.distributed.initialize(**kwargs)


def is_multi_process() -> bool:
    """Whether this run spans several processes (jax.distributed initialised)."""
    return jax.distributed.is_initialized()


def is_main_process() -> bool:
    """Only process 0 writes reports, samples and exports; every process writes its checkpoint shards."""
    # Without jax.distributed there is one process: asking JAX would start a backend (and on a GPU take most of its
    # memory) just to write a file, e.g. in the ablation's parent process.
    return not is_multi_process() or jax.process_index() == 0
