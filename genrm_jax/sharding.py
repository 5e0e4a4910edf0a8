"""Logical axis names -> mesh axes. Every parameter carries logical names (llama.logical_axes); a rule
table maps them onto a device mesh, so one code path runs on 1 CPU, 8 GPUs or a TPU pod.

Mesh axes: `data` (pure data parallel), `fsdp` (params sharded, batch sharded), `model` (tensor parallel).
A batch's leading axis is split over `data` x `fsdp` (the "batch" rule); the other axes of a batch stay whole.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")

# FSDP over the embedding dimension, tensor parallelism over heads / MLP / vocab.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("q_heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("layers", None),
    ("head_dim", None),
    ("norm", None),
    ("length", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, model: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, model) mesh; one of the sizes may be -1 to take the remaining devices."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, model]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: sizes must be >= 1 (or -1 for the rest)")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        sizes[sizes.index(-1)] = devices.size // known
    if int(np.prod(sizes)) != devices.size:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not use the {devices.size} devices")
    return Mesh(devices.reshape(sizes), MESH_AXES)


def mesh_from_config(cfg) -> Mesh:
    """The mesh of an experiment's `config.mesh` ({data, fsdp, model}; -1 = the devices left over)."""
    sizes = {}
    for axis in MESH_AXES:
        value = cfg[axis] if axis in cfg else 1
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"config.mesh.{axis}={value!r}: expected an integer (-1 = the rest)")
        sizes[axis] = value
    unknown = sorted(set(cfg) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"config.mesh.{unknown[0]}: no such mesh axis; expected {', '.join(MESH_AXES)}")
    try:
        return make_mesh(**sizes)
    except ValueError as e:
        raise ValueError(f"config.mesh: {e}") from None


def logical_to_spec(axes: tuple, rules=DEFAULT_RULES, mesh: Mesh | None = None) -> P:
    table = dict(rules)
    used, out = set(), []
    for name in axes:
        if name not in table:
            raise KeyError(f"no sharding rule for logical axis {name!r}")
        target = table[name]
        targets = target if isinstance(target, tuple) else (target,)
        # an axis of size 1 or one already used by this array stays replicated
        targets = tuple(t for t in targets if t is not None and t not in used
                        and (mesh is None or mesh.shape[t] > 1))
        used.update(targets)
        out.append(targets[0] if len(targets) == 1 else (targets or None))
    return P(*out)


def shardings(axes_tree, mesh: Mesh, rules=DEFAULT_RULES):
    """Pytree of logical-axes tuples -> pytree of NamedSharding."""
    return jax.tree.map(lambda a: NamedSharding(mesh, logical_to_spec(a, rules, mesh)), axes_tree,
                        is_leaf=lambda x: isinstance(x, tuple))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """Rows of a batch split over the batch axes (data x fsdp); as a pytree prefix it fits every batch field,
    whatever its rank, since only the leading axis is named."""
    return NamedSharding(mesh, logical_to_spec(("batch",), rules, mesh))


def batch_divisor(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many pieces a batch's rows are cut into: a batch size must be a multiple of it."""
    spec = batch_sharding(mesh, rules).spec
    names = spec[0] if spec and spec[0] is not None else ()
    names = names if isinstance(names, tuple) else (names,)
    return int(np.prod([mesh.shape[n] for n in names]))


def process_rows(sharding: NamedSharding, batch_size: int) -> tuple[int, int]:
    """The rows [start, stop) of a global batch whose shards live on this process's devices: what this process
    must load. Every process loads the whole batch when rows are not split across processes."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map((batch_size,)).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(batch_size if rows.stop is None else rows.stop)
    start, stop = min(starts), max(stops)
    if sum(b - a for a, b in set(zip(starts, stops))) != stop - start:
        raise ValueError(f"this process's rows of the batch are not contiguous ({sorted(set(zip(starts, stops)))}): "
                         "order the mesh's devices by process")
    return start, stop


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
    """This process's rows of a batch (`process_rows`) -> global arrays on the mesh (the global row count is
    inferred: the local rows times the number of processes they are split over)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def place(tree, shardings_tree):
    """Every leaf on its sharding. On a multi-host mesh a leaf this process holds whole (a numpy array, or one
    on a local device) becomes the shards of this process's devices; one already spread over a mesh moves."""
    def put(x, s):
        if s.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
            return jax.device_put(x, s)
        return jax.make_array_from_callback(np.shape(x), s, lambda index: x[index])
    return jax.tree.map(put, tree, shardings_tree)
