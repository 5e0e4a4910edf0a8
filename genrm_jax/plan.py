"""Per-device memory planner: will this model, batch and mesh fit, and if not, which mesh would?

    python -m genrm_jax.plan --config=experiments/configs/star_dpo.py:paper --model=llama-3.1-8b \
        --device=v5p-8 [--mesh=1,4,1 | --mesh=fsdp=4] [--config.train.batch_size=8] [--json]

Library (what a training or STaR launch calls before loading any weights):

    plan.check(model_config, train_cfg, mesh_shape, device_bytes, *, sampling=None, held_copies=1,
               usable=0.9) -> Plan
        model_config  llama.LlamaConfig (`model_config("llama-3.1-8b")` reads one without weights)
        train_cfg     finetune.FinetuneConfig: kind, batch_size, max_len, remat_policy (accum_steps if it has one)
        mesh_shape    {"data": d, "fsdp": f, "model": m} (missing axes 1) or a (data, fsdp, model) tuple
        device_bytes  memory of one device (chip or GPU): `DEVICES["v5p"].bytes`, `device("v4-32")`
        sampling      Sampling(rows, length, cache_dtype): the sampler's KV cache, or None
        held_copies   full weight copies alive besides the trained ones (fit keeps the weights it starts from;
                      the STaR loop's sampler keeps another)
        usable        the fraction of device memory the plan may fill (XLA needs workspace, the allocator slack)
    raises PlanError when the training or the sampling phase needs more than usable x device_bytes; its message
    lists the figures and a mesh of the same number of devices that fits, or the smallest one that does.
    `plan.estimate(...)` (same arguments) returns the Plan without checking.

Where the figures come from: the weights' and AdamW moments' shard shapes are those of the real shardings
(llama.logical_axes through sharding.shardings, train.state_shardings) on an abstract mesh, so no device and no
weight is needed. Gradients are params-shaped in the param dtype (train.py). Activations are an estimate of one
micro-batch's forward-pass residuals on an accelerator ("xla" kernels): per layer, what the remat policy keeps
(remat "dense": the layer input and every weight matmul's output, the MLP's hidden activation and the attention
output; "": the layer input only; no remat: all of it plus the attention probabilities), one layer's full working
set while it is recomputed, the attention mask, and the float32 logits with their gradient. Activations are
placed by the same rules (rows over data x fsdp, heads and MLP over model).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from absl import flags
from jax.sharding import AbstractMesh

from genrm_jax import cli, finetune, losses, methods, sharding, train
from genrm_jax.io import hf, registry
from genrm_jax.models import llama

GiB = 2**30


class PlanError(ValueError):
    """The plan does not fit; the message has the figures and a mesh that would."""


@dataclasses.dataclass(frozen=True)
class DeviceKind:
    bytes: int
    note: str


# Memory per JAX device. TPU v4 and v5p chips have two TensorCores that JAX shows as one device (megacore), and
# their accelerator types count cores: v4-32 and v5p-8 are 16 and 4 chips. v5e (v5litepod-N) and v6e count chips.
DEVICES = {
    "v4": DeviceKind(32 * GiB, "TPU v4 chip, 32 GiB HBM"),
    "v5e": DeviceKind(16 * GiB, "TPU v5e chip, 16 GiB HBM"),
    "v5p": DeviceKind(95 * GiB, "TPU v5p chip, 95 GiB HBM"),
    "v6e": DeviceKind(32 * GiB, "TPU v6e chip, 32 GiB HBM"),
    "a100-40": DeviceKind(40 * GiB, "A100 40 GB"),
    "a100-80": DeviceKind(80 * GiB, "A100 80 GB"),
    "h100": DeviceKind(80 * GiB, "H100 80 GB"),
    "h200": DeviceKind(140 * GiB, "H200 141 GB (nvidia-smi: 143,771 MiB)"),
}
_ACCELERATOR_ALIASES = {"v5litepod": "v5e"}
_COUNTS_CORES = ("v4", "v5p")  # accelerator types named by TensorCores, two per chip


def device(name: str) -> tuple[DeviceKind, int | None]:
    """"v5p" -> (kind, None); a TPU accelerator type "v4-32" -> (kind, 16 chips); "v5litepod-16" -> (v5e, 16)."""
    base, _, count = name.lower().rpartition("-") if re.search(r"-\d+$", name) else (name.lower(), "", "")
    base = _ACCELERATOR_ALIASES.get(base, base)
    if base not in DEVICES:
        raise ValueError(f"--device={name}: unknown device; expected one of {', '.join(DEVICES)} "
                         "(TPUs optionally with their size, e.g. v5p-8, v4-32, v5litepod-16)")
    if not count:
        return DEVICES[base], None
    n = int(count)
    return DEVICES[base], (n // 2 if base in _COUNTS_CORES else n)


# ------------------------------------------------------------------------------------------------ models

# config.json fields of models known without their files (Hugging Face's configs of the -Instruct releases).
_LLAMA_31 = dict(model_type="llama", vocab_size=128256, num_key_value_heads=8, rms_norm_eps=1e-5,
                 rope_theta=500000.0, max_position_embeddings=131072, bos_token_id=128000,
                 eos_token_id=[128001, 128008, 128009], tie_word_embeddings=False,
                 rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                   original_max_position_embeddings=8192))
KNOWN_MODELS = {
    "llama-3.1-8b": dict(_LLAMA_31, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32),
    "llama-3.1-70b": dict(_LLAMA_31, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                          num_attention_heads=64),
}


def model_config(name: str, **overrides) -> llama.LlamaConfig:
    """A model's config without its weights: a KNOWN_MODELS name (also as `meta-llama/Llama-3.1-8B-Instruct`),
    a Hugging Face directory (its config.json) or a registered name (genrm_jax.io.registry)."""
    key = name.lower().split("/")[-1].removesuffix("-instruct")
    if key in KNOWN_MODELS:
        return llama.config_from_hf(KNOWN_MODELS[key], source=name, **overrides)
    if not os.path.isdir(name):
        name = registry.resolve(name)  # raises naming the known models and what a path must be
    return hf.load_config(name, **overrides)


# -------------------------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Sampling:
    rows: int      # sequences decoded together (Engine.max_batch)
    length: int    # prompt + generated tokens
    cache_dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class Plan:
    mesh: dict[str, int]
    device_bytes: int
    usable: float
    training: dict[str, int]   # per-device bytes by part
    sampling: dict[str, int]   # empty without a Sampling
    details: dict[str, Any]    # what the figures assume: rows, tokens, policy, dtypes

    @property
    def limit(self) -> int:
        return int(self.device_bytes * self.usable)

    @property
    def training_total(self) -> int:
        return sum(self.training.values())

    @property
    def sampling_total(self) -> int:
        return sum(self.sampling.values())

    @property
    def peak(self) -> int:
        return max(self.training_total, self.sampling_total)

    @property
    def fits(self) -> bool:
        return self.peak <= self.limit

    def as_dict(self) -> dict:
        return {"mesh": self.mesh, "device_bytes": self.device_bytes, "usable_bytes": self.limit,
                "training": {**self.training, "total": self.training_total},
                "sampling": {**self.sampling, "total": self.sampling_total} if self.sampling else None,
                "peak": self.peak, "fits": self.fits, "details": self.details}

    def table(self) -> str:
        d = self.details
        rows = [(f"params ({d['param_dtype']})", self.training["params"]),
                ("gradients", self.training["gradients"]),
                ("AdamW moments (mu, nu)", self.training["optimizer"]),
                (f"held weights ({d['held_copies']} cop{'y' if d['held_copies'] == 1 else 'ies'})",
                 self.training["held_weights"]),
                (f"activations ({d['rows_per_device']} rows x {d['length']} tokens, "
                 f"remat {d['remat_policy']!r}, {d['compute_dtype']})", self.training["activations"]),
                ("= training", self.training_total)]
        if self.sampling:
            s = d["sampling"]
            rows += [(f"KV cache ({s['rows_per_device']} rows x {s['length']} tokens, {s['cache_dtype']})",
                      self.sampling["kv_cache"]),
                     ("= sampling (params, held weights, KV cache)", self.sampling_total)]
        width = max(len(r[0]) for r in rows)
        lines = [f"mesh {_mesh_str(self.mesh)}: {self.limit / GiB:.1f} of {self.device_bytes / GiB:.1f} GiB usable "
                 f"per device"]
        lines += [f"  {name:<{width}}  {b / GiB:9.2f} GiB" for name, b in rows]
        lines.append(f"  {'peak':<{width}}  {self.peak / GiB:9.2f} GiB  " + ("fits" if self.fits else "DOES NOT FIT"))
        return "\n".join(lines)


def _mesh_str(mesh: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in mesh.items())


def _mesh(mesh_shape) -> dict[str, int]:
    sizes = (dict(zip(sharding.MESH_AXES, mesh_shape)) if isinstance(mesh_shape, (tuple, list))
             else {a: int(mesh_shape.get(a, 1)) for a in sharding.MESH_AXES})
    unknown = set(mesh_shape) - set(sharding.MESH_AXES) if isinstance(mesh_shape, Mapping) else ()
    if unknown or len(sizes) != 3 or any(v < 1 for v in sizes.values()):
        raise ValueError(f"mesh {mesh_shape}: expected sizes >= 1 for {', '.join(sharding.MESH_AXES)}")
    return sizes


def _bytes_on_device(shape, spec, mesh, dtype) -> int:
    """Bytes of the largest shard of an array of `shape` partitioned by `spec` (uneven splits round up)."""
    n = 1
    for i, dim in enumerate(shape):
        names = spec[i] if i < len(spec) and spec[i] is not None else ()
        parts = math.prod(mesh.shape[a] for a in (names if isinstance(names, tuple) else (names,)))
        n *= -(-dim // parts)
    return n * jnp.dtype(dtype).itemsize


def _logical_bytes(shape, axes, mesh, dtype) -> int:
    return _bytes_on_device(shape, sharding.logical_to_spec(axes, mesh=mesh), mesh, dtype)


def _tree_bytes(structs, shardings_tree, mesh) -> int:
    leaves = zip(jax.tree.leaves(structs), jax.tree.leaves(shardings_tree))
    return sum(_bytes_on_device(s.shape, sh.spec, mesh, s.dtype) for s, sh in leaves)


def _weights(config: llama.LlamaConfig, mesh) -> tuple[int, int]:
    """(params, AdamW state) bytes per device, from the real shardings of the params and of train's state."""
    structs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s[0], config.param_dtype), llama.param_shapes(config),
                           is_leaf=llama._is_spec)
    param_sh = sharding.shardings(llama.logical_axes(config), mesh)
    optimizer = train.make_optimizer(train.OptimConfig())
    state = jax.eval_shape(lambda p: train.init_state(p, optimizer), structs)
    state_sh = train.state_shardings(structs, param_sh, optimizer)
    return _tree_bytes(structs, param_sh, mesh), _tree_bytes(state.opt_state, state_sh.opt_state, mesh)


_POLICY_ALIASES = {"nothing_saveable": "", "everything_saveable": None, "dots_saveable": "dense",
                   "dots_with_no_batch_dims_saveable": "dense"}


def _activations(config: llama.LlamaConfig, train_cfg, mesh) -> tuple[int, dict]:
    c = config
    loss = losses.spec(train_cfg.kind)
    rows = train_cfg.batch_size * (2 if loss.pairs else 1)  # both sides of a pair go through one forward
    rows //= getattr(train_cfg, "accum_steps", 1) or 1  # one micro-batch is alive at a time
    t, dt = train_cfg.max_len, c.compute_dtype
    policy = train_cfg.remat_policy
    policy = _POLICY_ALIASES.get(policy, policy if policy in ("", "dense", None) else None)  # unknown: all kept

    def act(*dims_axes, dtype=dt):
        dims, axes = zip(*dims_axes)
        return _logical_bytes((rows, t) + dims, ("batch", "length") + axes, mesh, dtype)

    embed, q = act((c.hidden_size, "embed")), act((c.num_heads, "q_heads"), (c.head_dim, "head_dim"))
    kv, mlp = act((c.num_kv_heads, "kv_heads"), (c.head_dim, "head_dim")), act((c.intermediate_size, "mlp"))
    layer_input = embed
    dense = q + 2 * kv + q + embed + 3 * mlp + embed  # q, k, v; attention out; wo out; gate, up, silu*up; down out
    probs = _logical_bytes((rows, c.num_heads, t, t), ("batch", "q_heads", "length", "length"), mesh, "float32")
    everything = layer_input + dense + 2 * embed + q + kv + mlp + probs  # + normed inputs, RoPE'd q k, silu, probs
    saved = {"": layer_input, "dense": layer_input + dense, None: everything}[policy]
    recompute = everything if policy is not None else 0  # one layer's backward rebuilds its full working set
    mask = _logical_bytes((rows, t, t), ("batch", "length", "length"), mesh, "bool")
    logits = 0
    if not loss.head:  # the reward heads read the hidden state, not logits
        logits = 2 * act((c.vocab_size, "vocab"), dtype="float32")  # float32 logits and their gradient
    parts = {"saved_per_layer": saved, "layers": c.num_layers, "recompute_one_layer": recompute,
             "attention_mask": mask, "logits_and_grad": logits, "final_hidden": embed}
    total = c.num_layers * saved + recompute + mask + logits + embed
    rows_per_device = -(-rows // math.prod(mesh.shape[a] for a in _names(("batch",), mesh)))
    return total, {"rows": rows, "rows_per_device": rows_per_device, "length": t, "parts": parts,
                   "remat_policy": "off" if policy is None else policy}


def _names(axes, mesh) -> tuple:
    spec = sharding.logical_to_spec(axes, mesh=mesh)
    names = spec[0] if spec and spec[0] is not None else ()
    return names if isinstance(names, tuple) else (names,)


def estimate(model_config: llama.LlamaConfig, train_cfg, mesh_shape, device_bytes: int, *,
             sampling: Sampling | None = None, held_copies: int = 1, usable: float = 0.9) -> Plan:
    """The per-device figures of training (and sampling); see the module docstring."""
    sizes = _mesh(mesh_shape)
    mesh = AbstractMesh(tuple(sizes.values()), tuple(sizes))
    params, optimizer = _weights(model_config, mesh)
    activations, act_details = _activations(model_config, train_cfg, mesh)
    training = {"params": params, "gradients": params, "optimizer": optimizer,
                "held_weights": held_copies * params, "activations": activations}
    details = {"num_params": model_config.num_params, "kind": train_cfg.kind, "param_dtype": model_config.param_dtype,
               "compute_dtype": model_config.compute_dtype, "held_copies": held_copies, **act_details}
    sample = {}
    if sampling is not None:
        c = model_config
        kv = 2 * _logical_bytes((c.num_layers, sampling.rows, c.num_kv_heads, sampling.length, c.head_dim),
                                ("layers", "batch", "kv_heads", "length", "head_dim"), mesh, sampling.cache_dtype)
        sample = {"params": params, "held_weights": held_copies * params, "kv_cache": kv}
        details["sampling"] = {**dataclasses.asdict(sampling),
                               "rows_per_device": -(-sampling.rows // math.prod(
                                   mesh.shape[a] for a in _names(("batch",), mesh)))}
    return Plan(sizes, int(device_bytes), usable, training, sample, details)


def check(model_config: llama.LlamaConfig, train_cfg, mesh_shape, device_bytes: int, *,
          sampling: Sampling | None = None, held_copies: int = 1, usable: float = 0.9) -> Plan:
    """`estimate`, raising PlanError (the figures and a mesh that fits) when the plan does not fit."""
    kw = dict(sampling=sampling, held_copies=held_copies, usable=usable)
    plan = estimate(model_config, train_cfg, mesh_shape, device_bytes, **kw)
    if plan.fits:
        return plan
    n = math.prod(plan.mesh.values())
    better = suggest(model_config, train_cfg, n, device_bytes, **kw)
    if better is None:
        advice = "no mesh of up to 8192 devices fits: fewer rows per step (config.train.batch_size, max_len)"
    elif math.prod(better.mesh.values()) == n:
        advice = f"a mesh of the same {n} devices that fits: {_mesh_str(better.mesh)} (peak {better.peak / GiB:.1f} GiB)"
    else:
        advice = (f"no mesh of {n} devices fits; the smallest that does: {_mesh_str(better.mesh)} "
                  f"({math.prod(better.mesh.values())} devices, peak {better.peak / GiB:.1f} GiB)")
    raise PlanError(f"does not fit: {model_config.num_params / 1e9:.2f}B params, {train_cfg.kind}, "
                    f"batch {train_cfg.batch_size} x {train_cfg.max_len} tokens on mesh {_mesh_str(plan.mesh)} needs "
                    f"{plan.peak / GiB:.1f} GiB per device, {plan.limit / GiB:.1f} usable (training: "
                    f"{_figures(plan.training)}" + (f"; sampling: {_figures(plan.sampling)}" if plan.sampling else "")
                    + f"); {advice}")


def _figures(parts: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v / GiB:.1f}" for k, v in parts.items()) + " GiB"


def suggest(model_config, train_cfg, devices: int, device_bytes: int, **kw) -> Plan | None:
    """A mesh that fits on `devices`, else 2x, 4x ... devices (up to 8192): the least tensor parallelism (the
    costliest communication), then the most memory to spare (fsdp before data parallelism), with the batch's rows
    splitting evenly over data x fsdp."""
    n = devices
    while n <= 8192:
        for model in _divisors(n):
            plans = [estimate(model_config, train_cfg, {"data": n // model // fsdp, "fsdp": fsdp, "model": model},
                              device_bytes, **kw)
                     for fsdp in _divisors(n // model) if train_cfg.batch_size % (n // model) == 0]
            fitting = [p for p in plans if p.fits]
            if fitting:
                return min(fitting, key=lambda p: p.peak)
        n *= 2
    return None


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---------------------------------------------------------------------------------------------- the CLI


def parse_mesh(text: str, devices: int | None) -> dict[str, int]:
    """"1,4,1" (data,fsdp,model) or "fsdp=4" / "data=2,fsdp=8" (other axes 1); one size may be -1 (the rest)."""
    try:
        if "=" in text:
            sizes = {a: 1 for a in sharding.MESH_AXES}
            for part in text.split(","):
                axis, _, value = part.partition("=")
                if axis.strip() not in sizes:
                    raise ValueError(f"no mesh axis {axis.strip()!r}")
                sizes[axis.strip()] = int(value)
        else:
            values = [int(v) for v in text.split(",")]
            if len(values) != 3:
                raise ValueError("expected three sizes")
            sizes = dict(zip(sharding.MESH_AXES, values))
    except ValueError as e:
        raise ValueError(f"--mesh={text}: {e}; expected data,fsdp,model sizes (1,4,1) or axis=size pairs "
                         "(fsdp=4)") from None
    return _resolve_rest(sizes, devices, f"--mesh={text}")


def _resolve_rest(sizes: dict, devices: int | None, what: str) -> dict[str, int]:
    rest = [a for a, v in sizes.items() if v == -1]
    if rest:
        known = math.prod(v for v in sizes.values() if v != -1)
        if devices is None or len(rest) > 1 or devices % known:
            raise ValueError(f"{what}: -1 needs the device count (--device=v5p-8 or --devices=N) and one -1 axis "
                             "whose size divides it")
        sizes[rest[0]] = devices // known
    if devices is not None and math.prod(sizes.values()) != devices:
        raise ValueError(f"{what}: {_mesh_str(sizes)} is {math.prod(sizes.values())} devices, not {devices}")
    return sizes


def config_inputs(c, kind: str | None = None) -> tuple[Any, Sampling | None, int]:
    """(FinetuneConfig, Sampling or None, held_copies) of an experiment config, from the method it names
    (`c.method`, genrm_jax/methods.py): its loss (or `kind`), its held weight copies, and the sampler's KV cache
    when it judges or trains by sampling (prompts of the longest `max_prompt_tokens`, else train.max_len, plus the
    longest judgment). The experiment's own check before loading (genrm_jax/experiment.py) plans the same."""
    method = methods.of_config(c)
    if method.loss is None or "train" not in c:
        raise ValueError(f"config.method: {method.name!r} trains nothing: there is no training to plan")
    ft = finetune.FinetuneConfig.from_config(c.train, kind=kind or method.loss)
    sampling = None
    if not method.head and "engine" in c:
        groups = [c[g] for g in ("judge", "pointwise", "star", "sre") if g in c]
        new = max(g.max_new_tokens for g in groups)
        prompt = max((g.get("max_prompt_tokens") or 0 for g in groups), default=0)
        sampling = Sampling(c.engine.max_batch, (prompt or ft.max_len) + new, c.engine.cache_dtype)
    return ft, sampling, method.held_copies


def _main(argv):
    f = flags.FLAGS
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    c = cli.config()
    try:
        dev, count = device(f.device)
        devices = f.devices or count
        if f.mesh:
            sizes = parse_mesh(f.mesh, devices)
        elif "mesh" in c:
            sizes = _resolve_rest({a: int(c.mesh.get(a, 1)) for a in sharding.MESH_AXES}, devices, "config.mesh")
        elif devices:
            sizes = {"data": 1, "fsdp": devices, "model": 1}
        else:
            raise ValueError("--mesh is required (or --device with a size, e.g. v5p-8, or --devices=N)")
        name = f.model or c.model
        if not name:
            raise ValueError("--model (or --config.model) is required, e.g. --model=llama-3.1-8b")
        compute = f.compute_dtype or c.get("compute_dtype")  # the flag, else the experiment's config.compute_dtype
        overrides = {k: v for k, v in (("param_dtype", f.param_dtype), ("compute_dtype", compute)) if v}
        mc = model_config(name, **overrides)
        if "compute_dtype" not in overrides:
            mc = mc.replace(compute_dtype=mc.param_dtype)  # as io.load_model does
        ft, sampling, held = config_inputs(c, f.kind)
        held = held if f.held_copies is None else f.held_copies
        plan = estimate(mc, ft, sizes, dev.bytes, sampling=sampling, held_copies=held, usable=f.usable)
        error = None
        if not plan.fits:
            try:
                check(mc, ft, sizes, dev.bytes, sampling=sampling, held_copies=held, usable=f.usable)
            except PlanError as e:
                error = str(e)
    except (ValueError, FileNotFoundError) as e:
        cli.fail(e)
    if f.json:
        print(json.dumps({"model": name, "device": f.device, **plan.as_dict(), "error": error}, indent=1))
    else:
        print(f"{name}: {mc.num_params / 1e9:.2f}B params; {ft.kind}, batch {ft.batch_size} x {ft.max_len} tokens; "
              f"{math.prod(sizes.values())} x {dev.note}")
        print(plan.table())
        if error:
            print(error)
    sys.exit(0 if plan.fits else 1)


def _cli():
    flags.DEFINE_string("model", None, "model: llama-3.1-8b, llama-3.1-70b, a HF directory or a registered name "
                                       "(default: config.model)")
    flags.DEFINE_string("device", None, f"device kind ({', '.join(DEVICES)}) or a TPU type (v5p-8, v4-32)")
    flags.DEFINE_string("mesh", None, "data,fsdp,model sizes (1,4,1) or axis=size pairs (fsdp=4); default: "
                                      "config.mesh, else every device on fsdp")
    flags.DEFINE_integer("devices", None, "number of devices (default: from --device's TPU size)")
    flags.DEFINE_string("kind", None, "loss kind (default: the loss of the config's method, genrm_jax/methods.py)")
    flags.DEFINE_string("param_dtype", None, "override the param dtype (default float32, as io.load_model)")
    flags.DEFINE_string("compute_dtype", None, "override the compute dtype (default: the param dtype)")
    flags.DEFINE_integer("held_copies", None, "weight copies held besides the trained ones (default: the method's, "
                                              "genrm_jax/methods.py)")
    flags.DEFINE_float("usable", 0.9, "fraction of device memory the plan may fill")
    flags.DEFINE_bool("json", False, "print JSON")
    flags.mark_flag_as_required("device")
    default = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments", "configs", "star_dpo.py:paper")
    cli.run(_main, default)


if __name__ == "__main__":
    _cli()
