"""Multi-host start-up. Every host of a TPU pod (or GPU cluster) runs the same command; the launchers set
GENRM_JAX_MULTIHOST=1 so that jax.distributed connects them before any device is touched."""
from __future__ import annotations

import os

import jax


def initialize() -> None:
    """Connects the hosts when launched multi-host; a no-op on one machine."""
    if os.environ.get("GENRM_JAX_MULTIHOST") != "1":
        return
    # On TPU pods and SLURM/Open MPI clusters jax finds the coordinator itself; elsewhere the launcher exports
    # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)


def is_main_process() -> bool:
    """Only process 0 writes reports and logs; every process writes its checkpoint shards."""
    return jax.process_index() == 0
