"""Llama in pure JAX: config, parameter init with logical axes, and the forward pass.

Params are a plain dict pytree. By default per-layer weights are stacked along a leading "layers" axis so that
the layer loop is a `lax.scan` (one compiled layer, cheap remat); with `scan_layers=False` they are a list of
per-layer dicts and the loop is unrolled (`unstack_layers` / `stack_layers` convert; `run_layers` runs either).

The layer maths (`layer`: norms, RoPE, attention, MLP, residuals) is written once. Where activations live and
which kernels compute them is a *layout* argument: `RowMajor` here ([B, T, D], the weights as stored; training
and the sampler on accelerators) or `feature_major.FeatureMajor` (the CPU sampler's [D, tokens]). Which kernels
run is `LlamaConfig.kernels`, resolved once at trace time by `resolve_kernels`.

Weight layout (HF's (out, in) matrices are transposed and split per head on import):
  embed [V, D]; wq [D, H, Dh]; wk, wv [D, K, Dh]; wo [H, Dh, D]; w_gate, w_up [D, F]; w_down [F, D].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from genrm_jax.models import attention
from genrm_jax.models.linear import DENSE, dense, unembed_tied

Params = dict[str, Any]

_SUPPORTED_MODEL_TYPES = ("llama",)
_SUPPORTED_ACTIVATIONS = ("silu",)
KERNELS = ("auto", "cpu", "xla") + attention.FUSED


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # llama3 scaling as a hashable tuple: (factor, low_freq_factor, high_freq_factor, original_max_pos).
    rope_llama3: tuple[float, float, float, int] | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: bool = False  # jax.checkpoint each layer: ~same speed on CPU, half the activation memory
    # With remat: what each layer keeps for the backward pass; "" = nothing, "dense" = the weight matmuls' outputs,
    # the MLP's hidden activation and the attention output, so only elementwise ops are recomputed and no matmul
    # runs twice; any other value names a jax.checkpoint_policies policy.
    remat_policy: str = ""
    # The layout of params["layers"]: True = each weight stacked along a leading "layers" axis and the layer loop a
    # `lax.scan` (one compiled layer: fast compiles, the least memory; the layout for large models and TPU pods);
    # False = a list of per-layer dicts and the loop unrolled. On XLA:CPU unrolled training steps were 2-4% faster
    # (no copying of each layer's saved activations into and out of stacked buffers), at 1.6x the compile time
    # and ~1.1 GB more peak memory for SmolLM2-135M (bench_train: 6.5 instead of 5.4 GB). Where that goes: XLA:CPU
    # removes optimization barriers before it schedules, and its scheduler then runs the backward pass's
    # recomputations (RMS norms, sigmoids, transposed activations; each needs only forward values) during the
    # forward pass, so they stay alive as if saved; a scanned layer's backward cannot start before its turn.
    scan_layers: bool = True
    # Which kernels compute the layers: "xla" = plain XLA ops and autodiff (what accelerators and sharding
    # propagation want; the reference the others are tested against); "cpu" = the hand-tuned XLA:CPU variants
    # (models/linear.py and attention.py: custom backward passes, blocked causal attention; the sampler's
    # feature-major layout, models/feature_major.py); "cudnn" / "splash" = "xla" with the causal self-attention
    # of training, prefill and scoring by a fused flash kernel (models/attention.py: cuDNN through
    # `jax.nn.dot_product_attention`, Pallas splash on TPU); "auto" = "cpu" on the CPU, "cudnn" on a GPU,
    # "splash" on a TPU, else "xla" (see `resolve_kernels`). The numbers are the same whichever (tests compare
    # them); only speed and memory differ.
    kernels: str = "auto"

    def __post_init__(self):
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels={self.kernels!r}: expected one of {KERNELS}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

    def replace(self, **kw) -> "LlamaConfig":
        return dataclasses.replace(self, **kw)

    @property
    def num_params(self) -> int:
        d, f, h, k, hd = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        per_layer = d * hd * (2 * h + 2 * k) + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * per_layer + d + head


def config_from_hf(hf: dict, *, source: str = "config.json", **overrides) -> LlamaConfig:
    """Builds a LlamaConfig from a Hugging Face config.json dict; unsupported features raise by name."""

    def bad(field, value, why):
        raise ValueError(f"{source}: unsupported {field}={value!r} ({why}); genrm-jax supports Llama 2/3.x and SmolLM2")

    model_type = hf.get("model_type")
    if model_type not in _SUPPORTED_MODEL_TYPES:
        bad("model_type", model_type, "only 'llama' is implemented")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field):
            bad(field, hf[field], "bias terms are not implemented")
    if hf.get("sliding_window") not in (None, 0) and hf.get("use_sliding_window", True):
        bad("sliding_window", hf["sliding_window"], "sliding-window attention is not implemented")
    if hf.get("hidden_act", "silu") not in _SUPPORTED_ACTIVATIONS:
        bad("hidden_act", hf["hidden_act"], "only silu is implemented")
    if hf.get("pretraining_tp", 1) not in (1, None):
        bad("pretraining_tp", hf["pretraining_tp"], "tensor-parallel pretraining split is not implemented")
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if field not in hf:
            raise ValueError(f"{source}: missing required field {field!r}")

    # transformers 5 moved rope settings into `rope_parameters`; older files use rope_theta + rope_scaling.
    rope = dict(hf.get("rope_scaling") or {})
    rope.update(hf.get("rope_parameters") or {})
    rope_theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    llama3 = None
    if rope_type == "llama3":
        llama3 = (float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                  int(rope["original_max_position_embeddings"]))
    elif rope_type not in ("default", None):
        bad("rope_scaling.rope_type", rope_type, "only default and llama3 RoPE are implemented")

    heads = hf["num_attention_heads"]
    eos = hf.get("eos_token_id", 2)
    eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    cfg = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        rope_theta=rope_theta,
        rope_llama3=llama3,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos,
        pad_token_id=hf.get("pad_token_id"),
        initializer_range=hf.get("initializer_range", 0.02),
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def config_to_hf(config: LlamaConfig) -> dict:
    """The config.json that `transformers` reads as LlamaForCausalLM."""
    rope_scaling = None
    if config.rope_llama3:
        f, lo, hi, orig = config.rope_llama3
        rope_scaling = dict(rope_type="llama3", factor=f, low_freq_factor=lo, high_freq_factor=hi,
                            original_max_position_embeddings=orig)
    eos = list(config.eos_token_ids)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": config.pad_token_id,
        "initializer_range": config.initializer_range,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": config.param_dtype,
    }


# ---------------------------------------------------------------------------------------------- params


def param_shapes(config: LlamaConfig) -> dict:
    """Shape and logical axis names of every parameter: the single source of truth for the layout."""
    c = config
    L, D, F, H, K, Dh, V = (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads,
                            c.head_dim, c.vocab_size)
    layer = {
        "attn_norm": ((D,), ("norm",)),
        "wq": ((D, H, Dh), ("embed", "q_heads", "head_dim")),
        "wk": ((D, K, Dh), ("embed", "kv_heads", "head_dim")),
        "wv": ((D, K, Dh), ("embed", "kv_heads", "head_dim")),
        "wo": ((H, Dh, D), ("q_heads", "head_dim", "embed")),
        "mlp_norm": ((D,), ("norm",)),
        "w_gate": ((D, F), ("embed", "mlp")),
        "w_up": ((D, F), ("embed", "mlp")),
        "w_down": ((F, D), ("mlp", "embed")),
    }
    spec = {
        "embed": ((V, D), ("vocab", "embed")),
        "layers": ({k: ((L,) + s, ("layers",) + a) for k, (s, a) in layer.items()} if c.scan_layers
                   else [dict(layer) for _ in range(L)]),
        "final_norm": ((D,), ("norm",)),
    }
    if not c.tie_word_embeddings:
        spec["lm_head"] = ((D, V), ("embed", "vocab"))
    return spec


def _is_spec(x):
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], tuple)


def logical_axes(config: LlamaConfig) -> dict:
    """Pytree matching `init`'s params, each leaf a tuple of logical axis names (see sharding.py)."""
    return jax.tree.map(lambda s: s[1], param_shapes(config), is_leaf=_is_spec)


def init(rng: jax.Array, config: LlamaConfig) -> Params:
    """Random params as Hugging Face initialises them: N(0, initializer_range) matrices, unit norms."""
    spec = param_shapes(config)
    leaves, treedef = jax.tree.flatten(spec, is_leaf=_is_spec)
    keys = jax.random.split(rng, len(leaves))
    dtype = jnp.dtype(config.param_dtype)

    def make(key, leaf):
        shape, axes = leaf
        if axes[-1] == "norm":
            return jnp.ones(shape, dtype)
        return (config.initializer_range * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return jax.tree.unflatten(treedef, [make(k, l) for k, l in zip(keys, leaves)])


def arrange_layers(params: Params, config: LlamaConfig) -> Params:
    """Params in the layer layout `config.scan_layers` asks for."""
    return stack_layers(params) if config.scan_layers else unstack_layers(params)


def unstack_layers(params: Params) -> Params:
    """Stacked layer weights -> a list of per-layer dicts (`scan_layers=False`, and the sampler)."""
    layers = params["layers"]
    if isinstance(layers, (list, tuple)):
        return params
    n = jax.tree.leaves(layers)[0].shape[0]
    return {**params, "layers": [jax.tree.map(lambda w: w[i], layers) for i in range(n)]}


def stack_layers(params: Params) -> Params:
    layers = params["layers"]
    if not isinstance(layers, (list, tuple)):
        return params
    return {**params, "layers": jax.tree.map(lambda *ws: jnp.stack(ws), *layers)}


# --------------------------------------------------------------------------------------------- compute


_AUTO_KERNELS = {"cpu": "cpu", "gpu": "cudnn", "tpu": "splash"}


def resolve_kernels(config: LlamaConfig) -> str:
    """`config.kernels` with "auto" decided by JAX's default backend: "cpu" on the CPU, "cudnn" on a GPU,
    "splash" on a TPU, "xla" elsewhere. Called at trace time by whoever builds the computation (`forward`, the
    sampler's Engine), never inside a kernel. (Shapes or dtypes a fused kernel does not take, e.g. fp32 for
    cuDNN, fall back to the reference attention where they occur: `attention.causal_attention`.)"""
    if config.kernels != "auto":
        return config.kernels
    return _AUTO_KERNELS.get(jax.default_backend(), "xla")


def rms_norm(x, weight, eps, axis: int = -1):
    """Normalises x over its feature axis `axis` (-1 for [..., D], 0 for feature-major [D, T]).
    Statistics in fp32, the weight multiplied in the input dtype, as Hugging Face does."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=axis, keepdims=True) + eps)
    shape = [1] * x.ndim
    shape[axis] = -1
    return weight.astype(x.dtype).reshape(shape) * xf.astype(x.dtype)


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    dh = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh))
    if config.rope_llama3:
        factor, lo, hi, orig = config.rope_llama3
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > orig / lo, inv / factor, inv)
        smooth = (orig / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= orig / hi) & (wavelen <= orig / lo)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope(positions, config: LlamaConfig, max_position: int | None = None):
    """(cos, sin), each [B, T, Dh/2], for integer positions [B, T]: computed once and shared by all layers.

    With a static bound `max_position` (> every position) the values are looked up in a table built at trace
    time, which the sampler uses: in its unrolled layers XLA fuses in-graph cos and sin into every layer's
    rotation and recomputes them per element of every head (measured: ~5% of the op time of a 32-row decode
    step, though the wall-clock gain, 0-4%, is within this machine's noise).
    """
    inv_freq = rope_inv_freq(config)
    if max_position is None:
        angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
        return jnp.cos(angles), jnp.sin(angles)
    angles = np.arange(max_position, dtype=np.float32)[:, None] * inv_freq[None, :]
    return jnp.asarray(np.cos(angles))[positions], jnp.asarray(np.sin(angles))[positions]


def apply_rope(x, rope):
    """Rotate-half RoPE. x [B, T, N, Dh]; rope = `rope(positions, config)`."""
    cos, sin = (a[:, :, None, :] for a in rope)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class RowMajor:
    """The layout of training and of the sampler on accelerators: activations [B, T, D] (tokens as rows), the
    weights as stored. A layout is what `layer` asks of the data: normalise, project to heads and back, the MLP's
    matmuls, self-attention; and, for the sampler, embed tokens, take each sequence's last position, unembed.
    The attention hooks of `layer` always see row-major [B, T, heads, Dh] tensors, whatever the layout."""

    def __init__(self, config: LlamaConfig):
        self.config = config
        self.kernels = resolve_kernels(config)

    def embed(self, params, tokens):
        return embed(params, tokens, self.config)

    def norm(self, x, weight):
        return rms_norm(x, weight, self.config.rms_norm_eps)

    def heads(self, x, w):
        """x [B, T, D] x w [D, N, Dh] -> [B, T, N, Dh]."""
        return dense(x, w, kernels=self.kernels)

    def merge_heads(self, a, w):
        """a [B, T, H, Dh] x wo [H, Dh, D] -> [B, T, D]."""
        return dense(a, w, axes=2, kernels=self.kernels)

    def dense(self, x, w):
        return dense(x, w, kernels=self.kernels)

    def attend(self, q, k, v, mask: attention.Mask):
        return attention.causal_attention(q, k, v, mask, self.kernels)

    def last(self, x):
        """Each sequence's last position: [B, T, D] -> [B, D]."""
        return x[:, -1]

    def logits(self, params, hidden):
        return unembed(params, hidden, self.config)


def layer(lp, x, rope, mask, config, *, layout=None, kv_update=None, attend=None):
    """One decoder layer on x in `layout` (default `RowMajor(config)`); `mask` is what the attention takes (an
    `attention.Mask` for the layout's causal self-attention). `kv_update(k, v) -> (k_all, v_all)`
    lets the sampler splice in its KV cache, and `attend(q, k_all, v_all, mask)` (default: the layout's causal
    self-attention) reads them in whatever layout that cache keeps (the sampler's shared-prompt attention)."""
    ops = layout or RowMajor(config)
    h = ops.norm(x, lp["attn_norm"])
    q = apply_rope(ops.heads(h, lp["wq"]), rope)
    k = apply_rope(ops.heads(h, lp["wk"]), rope)
    v = ops.heads(h, lp["wv"])
    if kv_update is not None:
        k, v = kv_update(k, v)
    # Kept by remat "dense" like a matmul output: the attention backward recomputes its own probabilities, so
    # nothing else needs the attention forward again.
    a = checkpoint_name((attend or ops.attend)(q, k, v, mask), DENSE)
    x = x + ops.merge_heads(a, lp["wo"])
    h = ops.norm(x, lp["mlp_norm"])
    # Tagged like the matmul outputs: remat "dense" keeps it, so the backward transposes a stored buffer
    # instead of recomputing silu inside a strided transpose loop.
    hidden = checkpoint_name(jax.nn.silu(ops.dense(h, lp["w_gate"])) * ops.dense(h, lp["w_up"]), DENSE)
    return x + ops.dense(hidden, lp["w_down"])


def run_layers(body, x, layers, *per_layer):
    """Threads x through every layer: `body(x, lp, *per_layer_i) -> (x, out_i)`. Stacked layers (and stacked
    `per_layer` state, e.g. a KV cache [L, ...]) run as one `lax.scan`, whose outputs come back stacked; a list of
    per-layer dicts (with per-layer tuples of state) runs unrolled, its outputs a tuple, one per layer."""
    if isinstance(layers, (list, tuple)):
        outs = []
        for i, lp in enumerate(layers):
            x, out = body(x, lp, *(state[i] for state in per_layer))
            outs.append(out)
        return x, tuple(outs)
    return jax.lax.scan(lambda x, xs: body(x, *xs), x, (layers, *per_layer))


def embed(params, tokens, config):
    return params["embed"].astype(config.compute_dtype)[tokens]


def unembed(params, hidden, config):
    """Final norm is *not* applied here: `hidden` [..., D] is already normed."""
    if config.tie_word_embeddings:
        return unembed_tied(hidden, params["embed"], resolve_kernels(config))
    w = params["lm_head"].astype(hidden.dtype)
    return checkpoint_name(jnp.einsum("...d,dv->...v", hidden, w, preferred_element_type=jnp.float32), DENSE)


causal_mask = attention.causal_mask  # [B, T] segment ids -> [B, T, T] bool; defined with the kernels that take it


class Output(NamedTuple):
    logits: jax.Array | None  # [B, T, V] float32, None when logits=False
    hidden: jax.Array | None  # [B, T, D] after the final norm, when return_hidden=True


def forward(params: Params, tokens, config: LlamaConfig, *, positions=None, segment_ids=None,
            attention_mask=None, shared_prefix: bool = False, logits: bool = True,
            return_hidden: bool = False) -> Output:
    """Full-sequence forward pass.

    tokens [B, T] int. `attention_mask` [B, T] (1 = real token) or `segment_ids` [B, T] (packed sequences,
    0 = padding). `positions` default to each token's index among the real tokens of its segment, which
    makes left padding and packing give the same logits as an unpadded sequence. `shared_prefix` (static; with
    `segment_ids` and explicit `positions`): segment 1 is a prompt every other segment continues
    (`attention.shared_prefix_mask`), as in a packed preference pair.
    """
    if shared_prefix and (segment_ids is None or positions is None):
        raise ValueError("shared_prefix needs segment_ids and positions (each completion continues the prompt)")
    padded = segment_ids is not None or attention_mask is not None  # else plain causal: fused kernels need no mask
    if segment_ids is None:
        segment_ids = (jnp.ones_like(tokens) if attention_mask is None else attention_mask).astype(jnp.int32)
    if positions is None:
        positions = segment_positions(segment_ids)
    mask = attention.Mask(segment_ids, padded, shared_prefix)
    rotary = rope(positions, config)
    ops = RowMajor(config)
    x = ops.embed(params, tokens)

    def body(x, lp):
        return layer(lp, x, rotary, mask, config, layout=ops), None

    unrolled = isinstance(params["layers"], (list, tuple))  # the params' layout decides, see `scan_layers`
    if config.remat:
        policy = remat_policy(config.remat_policy)
        # Outside a scan XLA may merge the recomputation with the forward pass (CSE) unless prevented, keeping
        # activations alive after all: peak RSS 6.7 -> 6.5 GB in bench_train's unrolled SmolLM2 step.
        body = jax.checkpoint(body, prevent_cse=unrolled, policy=policy)
    x, _ = run_layers(body, x, params["layers"])

    hidden = ops.norm(x, params["final_norm"])
    return Output(ops.logits(params, hidden) if logits else None, hidden if return_hidden else None)


def remat_policy(name: str):
    """`LlamaConfig.remat_policy` -> a jax.checkpoint policy (None = save nothing)."""
    if not name:
        return None
    if name == DENSE:
        return jax.checkpoint_policies.save_only_these_names(DENSE)
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None:
        raise ValueError(f"unknown remat_policy {name!r}: expected '', {DENSE!r} or a jax.checkpoint_policies name")
    return policy


def segment_positions(segment_ids):
    """Index of each token among the real tokens of its segment (padding gets 0)."""
    real = (segment_ids > 0).astype(jnp.int32)
    start = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                             segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    # cumulative count of real tokens, reset at every segment start
    idx = jnp.cumsum(real, axis=1)
    base = jax.lax.cummax(jnp.where(start, idx - real, 0), axis=1)
    return jnp.maximum(idx - base - 1, 0)
