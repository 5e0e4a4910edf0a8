"""Hugging Face checkpoint directories in and out: config.json + safetensors (single file or sharded index).

Loading reads tensor by tensor into preallocated stacked arrays and moves each finished leaf to the device
before the next is built, so peak host memory stays near one copy of the weights. Every expected tensor is
checked for presence and shape before any weight is read; pickle (`*.bin`) checkpoints are refused.
"""
from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np

from genrm_jax import distributed
from genrm_jax.io import safetensors_file as st
from genrm_jax.models import llama

_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json", "generation_config.json", "vocab.json",
                   "merges.txt", "added_tokens.json")
# Buffers some exporters save that carry no weights.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    pass


def load_config(model_dir: str, **overrides) -> llama.LlamaConfig:
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{model_dir}: no config.json (expected a Hugging Face model directory)")
    with open(path) as f:
        try:
            hf = json.load(f)
        except ValueError as e:
            raise CheckpointError(f"{path}: invalid JSON: {e}") from None
    return llama.config_from_hf(hf, source=path, **overrides)


def _same(w):
    return w


# (our layer key, HF name under model.layers.{i}., HF (out, in) -> ours, ours -> HF). HF -> ours is a view of
# the HF array (reshape of the contiguous array, then transpose), so a slice of it reads only that slice.
def _layer_table(c: llama.LlamaConfig):
    D, H, K, Dh = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    return [
        ("attn_norm", "input_layernorm.weight", _same, _same),
        ("wq", "self_attn.q_proj.weight", lambda w: w.reshape(H, Dh, D).transpose(2, 0, 1),
         lambda w: w.reshape(D, H * Dh).T),
        ("wk", "self_attn.k_proj.weight", lambda w: w.reshape(K, Dh, D).transpose(2, 0, 1),
         lambda w: w.reshape(D, K * Dh).T),
        ("wv", "self_attn.v_proj.weight", lambda w: w.reshape(K, Dh, D).transpose(2, 0, 1),
         lambda w: w.reshape(D, K * Dh).T),
        ("wo", "self_attn.o_proj.weight", lambda w: w.reshape(D, H, Dh).transpose(1, 2, 0),
         lambda w: w.reshape(H * Dh, D).T),
        ("mlp_norm", "post_attention_layernorm.weight", _same, _same),
        ("w_gate", "mlp.gate_proj.weight", lambda w: w.T, lambda w: w.T),
        ("w_up", "mlp.up_proj.weight", lambda w: w.T, lambda w: w.T),
        ("w_down", "mlp.down_proj.weight", lambda w: w.T, lambda w: w.T),
    ]


def _top_table(c: llama.LlamaConfig):
    rows = [("embed", "model.embed_tokens.weight", _same, _same),
            ("final_norm", "model.norm.weight", _same, _same)]
    if not c.tie_word_embeddings:
        rows.append(("lm_head", "lm_head.weight", lambda w: w.T, lambda w: w.T))
    return rows


def hf_tensor_shapes(c: llama.LlamaConfig) -> dict[str, tuple]:
    """Name -> shape of every tensor a checkpoint of this config must hold."""
    shapes = llama.param_shapes(c)
    out = {}
    for key, name, _, to_hf in _top_table(c):
        out[name] = to_hf(np.empty(shapes[key][0], np.bool_)).shape
    for key, name, _, to_hf in _layer_table(c):
        shape = to_hf(np.empty(_layer_shape(shapes, key), np.bool_)).shape
        for i in range(c.num_layers):
            out[f"model.layers.{i}.{name}"] = shape
    return out


def _index(model_dir: str) -> dict[str, st.TensorInfo]:
    index_path = os.path.join(model_dir, _INDEX)
    if os.path.exists(index_path):
        with open(index_path) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        pickles = glob.glob(os.path.join(model_dir, "*.bin")) + glob.glob(os.path.join(model_dir, "*.pt"))
        hint = " (only pickle checkpoints found; genrm-jax never unpickles: convert them to safetensors)" if pickles else ""
        raise CheckpointError(f"{model_dir}: no .safetensors weights{hint}")
    tensors = {}
    for fname in files:
        path = os.path.join(model_dir, fname)
        if not os.path.exists(path):
            raise CheckpointError(f"{index_path}: lists {fname}, which does not exist")
        tensors.update(st.read_header(path))
    return tensors


def check_checkpoint(model_dir: str, config: llama.LlamaConfig) -> dict[str, st.TensorInfo]:
    """Validates names and shapes of every tensor without reading weights."""
    tensors = _index(model_dir)
    expected = hf_tensor_shapes(config)
    missing = [n for n in expected if n not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{model_dir}: missing tensor {missing[0]!r}{more}")
    for name, shape in expected.items():
        if tensors[name].shape != tuple(shape):
            raise CheckpointError(f"{tensors[name].path}: tensor {name!r} has shape {tensors[name].shape}, "
                                  f"expected {tuple(shape)} from config.json")
    tolerated = {"lm_head.weight"} if config.tie_word_embeddings else set()
    extra = [n for n in tensors if n not in expected and n not in tolerated and not n.endswith(_IGNORED_SUFFIXES)]
    if extra:
        raise CheckpointError(f"{model_dir}: unexpected tensor {extra[0]!r} ({len(extra)} in all): "
                              "not a plain Llama checkpoint")
    return tensors


def _np_dtype(name: str):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def load_params(model_dir: str, config: llama.LlamaConfig, shardings=None) -> llama.Params:
    """Reads weights into the param layout of `config` (`scan_layers`), in `config.param_dtype`.

    `shardings`: optional pytree of `jax.sharding.Sharding` matching the params (see sharding.py); each device
    then receives only its shard, read straight from the files (`_load_sharded`): no host ever holds a whole copy.
    """
    tensors = check_checkpoint(model_dir, config)
    if shardings is not None:
        return _load_sharded(tensors, config, shardings)
    dtype = _np_dtype(config.param_dtype)
    shapes = llama.param_shapes(config)

    def fill(dst, info, to_ours):
        if to_ours is _same and info.dtype == dst.dtype:
            st.read_tensor(info, out=dst)  # straight into place
        else:
            dst[...] = to_ours(st.read_tensor(info))

    # device_put of a 64-byte aligned host array aliases it on CPU: no second copy of the weights.
    params: dict = {"layers": {}}
    for key, name, to_ours, _ in _top_table(config):
        leaf = _aligned_empty(shapes[key][0], dtype)
        fill(leaf, tensors[name], to_ours)
        params[key] = jax.device_put(leaf)
        del leaf
    if not config.scan_layers:
        params["layers"] = [{} for _ in range(config.num_layers)]
    for key, name, to_ours, _ in _layer_table(config):
        if config.scan_layers:
            stacked = _aligned_empty(shapes["layers"][key][0], dtype)
            for i in range(config.num_layers):
                fill(stacked[i], tensors[f"model.layers.{i}.{name}"], to_ours)
            params["layers"][key] = jax.device_put(stacked)
            del stacked
            continue
        for i, layer in enumerate(params["layers"]):
            leaf = _aligned_empty(_layer_shape(shapes, key), dtype)
            fill(leaf, tensors[f"model.layers.{i}.{name}"], to_ours)
            layer[key] = jax.device_put(leaf)
            del leaf
    return params


def _read_slice(info: st.TensorInfo, to_ours, index: tuple, dtype) -> np.ndarray:
    """Slice `index` of one tensor in our layout, copied out of its memory map (only the slice's bytes)."""
    return np.array(to_ours(st.tensor_view(info))[index], dtype=dtype)


def _load_sharded(tensors: dict[str, st.TensorInfo], config: llama.LlamaConfig, shardings) -> llama.Params:
    """Every leaf built by jax.make_array_from_callback: JAX asks for the slice each local device holds, and the
    callback reads that slice from the file (a stacked leaf: the slice of each layer in the slice's layer range)."""
    dtype = _np_dtype(config.param_dtype)
    shapes = llama.param_shapes(config)
    shard_of = dict(zip(_leaf_keys(shapes), jax.tree.leaves(shardings)))

    def leaf(key, shape, to_ours, infos, stacked):
        def read(index):
            if not stacked:
                return _read_slice(infos[0], to_ours, index, dtype)
            layers = range(*index[0].indices(len(infos)))
            return np.stack([_read_slice(infos[i], to_ours, index[1:], dtype) for i in layers])
        return jax.make_array_from_callback(shape, shard_of[key], read)

    params: dict = {"layers": {} if config.scan_layers else [{} for _ in range(config.num_layers)]}
    for key, name, to_ours, _ in _top_table(config):
        params[key] = leaf(key, shapes[key][0], to_ours, [tensors[name]], False)
    for key, name, to_ours, _ in _layer_table(config):
        infos = [tensors[f"model.layers.{i}.{name}"] for i in range(config.num_layers)]
        if config.scan_layers:
            params["layers"][key] = leaf("layers/" + key, shapes["layers"][key][0], to_ours, infos, True)
            continue
        for i, layer in enumerate(params["layers"]):
            layer[key] = leaf(f"layers/{i}/{key}", _layer_shape(shapes, key), to_ours, infos[i:i + 1], False)
    return params


def _on_host(x) -> np.ndarray:
    """The whole array on this host; a collective (every process must call it) when other hosts hold parts."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _layer_shape(shapes, key) -> tuple:
    """One layer's shape of weight `key`, in either layer layout."""
    layers = shapes["layers"]
    return layers[0][key][0] if isinstance(layers, list) else layers[key][0][1:]


def _aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(n + align, np.uint8)
    start = (-buf.ctypes.data) % align
    return buf[start:start + n].view(dtype).reshape(shape)


def _leaf_keys(tree, prefix=""):
    """Slash-joined paths of a spec tree's leaves, in `jax.tree.leaves` order (dict keys sorted, lists in order)."""
    if isinstance(tree, list):
        items = [(str(i), v) for i, v in enumerate(tree)]
    else:
        items = [(k, tree[k]) for k in sorted(tree)]
    keys = []
    for k, v in items:
        if isinstance(v, (dict, list)):
            keys += _leaf_keys(v, prefix + k + "/")
        else:
            keys.append(prefix + k)
    return keys


def process_umask() -> int:
    """The process umask (reading it means setting it: os.umask has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str) -> None:
    """Gives `path`, and everything under it when a directory, the modes a plain mkdir / open would under the
    process umask (0755 / 0644 under the usual 022): tempfile.mkdtemp makes 0700 directories and safetensors
    writes 0600 files, which a second user of a shared directory cannot read."""
    mask = process_umask()
    dir_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    if not os.path.isdir(path):
        os.chmod(path, file_mode)
        return
    os.chmod(path, dir_mode)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p):  # chmod would follow it out of the tree
                os.chmod(p, dir_mode if name in dirs else file_mode)


def save_hf(params: llama.Params, config: llama.LlamaConfig, out_dir: str, *, tokenizer_dir: str | None = None,
            dtype: str | None = None, max_shard_bytes: int = 4 << 30) -> None:
    """Writes a directory that `transformers` loads as LlamaForCausalLM (weights, config, tokenizer). Files get the
    modes of the process umask, like any other file the user writes (see `apply_umask`).

    Params sharded over a multi-host mesh are gathered leaf by leaf, which takes every process: all of them call
    this, and only the main one writes.
    """
    from safetensors.numpy import save_file


    dtype = dtype or config.param_dtype
    np_dtype = _np_dtype(dtype)
    params = llama.stack_layers(params)

    def tensors():
        for key, name, _, to_hf in _top_table(config):
            yield name, to_hf(_on_host(params[key]))
        for key, name, _, to_hf in _layer_table(config):
            stacked = _on_host(params["layers"][key])
            for i in range(config.num_layers):
                yield f"model.layers.{i}.{name}", to_hf(stacked[i])

    if not distributed.is_main_process():
        for _ in tensors():  # the same gathers as the main process, in the same order
            pass
        return
    os.makedirs(out_dir, exist_ok=True)

    shards, current, size = [], {}, 0
    for name, w in tensors():
        w = np.ascontiguousarray(w.astype(np_dtype))
        if current and size + w.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = w
        size += w.nbytes
    shards.append(current)

    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
        apply_umask(os.path.join(out_dir, fname))  # safetensors writes 0600
        for name, w in shard.items():
            weight_map[name] = fname
            total += w.nbytes
    if len(shards) > 1:
        with open(os.path.join(out_dir, _INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    hf_config = llama.config_to_hf(config)
    hf_config["torch_dtype"] = dtype
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    if tokenizer_dir and os.path.abspath(tokenizer_dir) != os.path.abspath(out_dir):
        for fname in TOKENIZER_FILES:
            src = os.path.join(tokenizer_dir, fname)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(out_dir, fname))  # contents only: modes from the umask
