"""Logical axis names -> mesh axes. Every parameter carries logical names (llama.logical_axes); a rule
table maps them onto a device mesh, so one code path runs on 1 CPU, 8 GPUs or a TPU pod.

Mesh axes: `data` (pure data parallel), `fsdp` (params sharded, batch sharded), `model` (tensor parallel).
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
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        sizes[sizes.index(-1)] = devices.size // known
    if int(np.prod(sizes)) != devices.size:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not use the {devices.size} devices")
    return Mesh(devices.reshape(sizes), MESH_AXES)


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
