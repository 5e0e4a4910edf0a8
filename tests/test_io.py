"""Checkpoint I/O: export/import round trips, GGUF import, bad input, tokenizers, the convert command."""
import json
import os
import shutil

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from gguf import quants
from safetensors.numpy import load_file, save_file

from conftest import tiny_config
from genrm_jax import convert, tokenizer
from genrm_jax.io import gguf as gguf_io
from genrm_jax.io import hf, load_model, registry
from genrm_jax.io.safetensors_file import SafetensorsError
from genrm_jax.models import llama


def exported(tmp_path, config, seed=0):
    params = llama.init(jax.random.PRNGKey(seed), config)
    out = str(tmp_path / "model")
    hf.save_hf(params, config, out)
    return params, out


def tree_equal(a, b):
    return jax.tree.all(jax.tree.map(lambda x, y: x.dtype == y.dtype and bool((np.asarray(x) == np.asarray(y)).all()), a, b))


@pytest.mark.parametrize("tied", [False, True])
def test_export_then_transformers_gives_same_logits(tmp_path, tied):
    config = tiny_config(tie_word_embeddings=tied, initializer_range=0.1)
    params, out = exported(tmp_path, config)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    tokens = np.arange(3, 23)[None]
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(llama.forward(params, tokens, config).logits)
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_import_export_is_exact(tmp_path, dtype):
    config = tiny_config(param_dtype=dtype)
    params, out = exported(tmp_path, config)
    assert tree_equal(hf.load_params(out, hf.load_config(out, param_dtype=dtype)), params)


def test_sharded_index_round_trip(tmp_path):
    config = tiny_config()
    params = llama.init(jax.random.PRNGKey(3), config)
    out = str(tmp_path / "sharded")
    hf.save_hf(params, config, out, max_shard_bytes=40_000)
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(out) if f.endswith(".safetensors")]) > 2
    assert tree_equal(hf.load_params(out, hf.load_config(out)), params)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_load_with_shardings(tmp_path, scan_layers):
    from genrm_jax import sharding

    config = tiny_config()
    params, out = exported(tmp_path, config)
    config = config.replace(scan_layers=scan_layers)
    shard = sharding.shardings(llama.logical_axes(config), sharding.make_mesh())
    loaded = hf.load_params(out, config, shardings=shard)
    assert tree_equal(loaded, llama.arrange_layers(params, config))
    assert jax.tree.leaves(loaded)[0].sharding == jax.tree.leaves(shard)[0]


# ------------------------------------------------------------------------------------------- bad input


def test_missing_tensor_is_named(tmp_path):
    config = tiny_config()
    _, out = exported(tmp_path, config)
    path = os.path.join(out, "model.safetensors")
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path)
    with pytest.raises(hf.CheckpointError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        hf.load_params(out, config)


def test_wrong_shape_is_named(tmp_path):
    config = tiny_config()
    _, out = exported(tmp_path, config)
    path = os.path.join(out, "model.safetensors")
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
    save_file(tensors, path)
    with pytest.raises(hf.CheckpointError, match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(16, 64\), "
                                                 r"expected \(32, 64\)"):
        hf.load_params(out, config)


def test_truncated_safetensors(tmp_path):
    config = tiny_config()
    _, out = exported(tmp_path, config)
    path = os.path.join(out, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(SafetensorsError, match="truncated safetensors file"):
        hf.load_params(out, config)
    with open(path, "r+b") as f:
        f.truncate(5)
    with pytest.raises(SafetensorsError, match="truncated"):
        hf.load_params(out, config)


def test_unsupported_architecture(tmp_path):
    config = tiny_config()
    _, out = exported(tmp_path, config)
    cfg_path = os.path.join(out, "config.json")
    hf_cfg = json.load(open(cfg_path))
    json.dump({**hf_cfg, "model_type": "qwen2", "use_sliding_window": False}, open(cfg_path, "w"))
    with pytest.raises(ValueError, match=r"config.json: unsupported model_type='qwen2'"):
        load_model(out, tokenizer=False)


def test_pickle_checkpoints_are_refused(tmp_path):
    config = tiny_config()
    _, out = exported(tmp_path, config)
    os.remove(os.path.join(out, "model.safetensors"))
    open(os.path.join(out, "pytorch_model.bin"), "wb").write(b"not unpickled")
    with pytest.raises(hf.CheckpointError, match="never unpickles"):
        hf.load_params(out, config)


def test_missing_tokenizer_fails_before_weights_are_read(tmp_path, monkeypatch):
    config = tiny_config()
    _, out = exported(tmp_path, config)
    read = []
    monkeypatch.setattr(hf, "load_params", lambda *a, **k: read.append(1))
    with pytest.raises(tokenizer.TokenizerError, match="no tokenizer"):
        load_model(out)
    assert not read


def test_unknown_model_name():
    with pytest.raises(FileNotFoundError, match="neither a registered model"):
        registry.resolve("no-such-model")


# ------------------------------------------------------------------------------------------------ GGUF


def write_gguf(path, config, params, qtype):
    """Writes a tiny llama GGUF the way llama.cpp does (q/k rows permuted, (out, in) row-major)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(config.num_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_heads)
    w.add_head_count_kv(config.num_kv_heads)
    w.add_rope_dimension_count(config.head_dim)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    for name, arr in hf_named(config, params):
        arr = np.ascontiguousarray(arr, np.float32)
        if name.endswith("attn_q.weight"):
            arr = gguf_io.permute(arr, config.num_heads)
        elif name.endswith("attn_k.weight"):
            arr = gguf_io.permute(arr, config.num_kv_heads)
        if arr.ndim == 1 or qtype == Q.F32:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, quants.quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def hf_named(config, params):
    gg = {v: k for k, v in gguf_io._TOP.items()}
    blk = {v: k for k, v in gguf_io._BLOCK.items()}
    with_tensors = {}
    for key, name, _, to_hf in hf._top_table(config):
        with_tensors[gg[name]] = to_hf(np.asarray(params[key]))
    for key, name, _, to_hf in hf._layer_table(config):
        for i in range(config.num_layers):
            with_tensors[f"blk.{i}.{blk[name.rsplit('.', 1)[0]]}.weight"] = to_hf(np.asarray(params["layers"][key][i]))
    return with_tensors.items()


def test_gguf_f32_import_is_exact(tmp_path):
    config = tiny_config(hidden_size=64, intermediate_size=128, rms_norm_eps=1e-5)
    params = llama.init(jax.random.PRNGKey(4), config)
    write_gguf(tmp_path / "tiny.gguf", config, params, Q.F32)
    out = str(tmp_path / "hf")
    gguf_io.convert_gguf(str(tmp_path / "tiny.gguf"), out)
    got = hf.load_params(out, hf.load_config(out))
    assert tree_equal(got, params)


@pytest.mark.parametrize("qtype,tol", [(Q.F16, 1e-3), (Q.BF16, 1e-2), (Q.Q8_0, 2e-3), (Q.Q4_0, 0.03), (Q.Q4_1, 0.03)])
def test_gguf_quantized_import(tmp_path, qtype, tol):
    # hidden 256 so every row is whole quantization blocks (32 for Q*_0/1)
    config = tiny_config(hidden_size=256, intermediate_size=256, num_heads=4, num_kv_heads=2, head_dim=64)
    params = llama.init(jax.random.PRNGKey(5), config)
    write_gguf(tmp_path / "q.gguf", config, params, qtype)
    out = str(tmp_path / "hf")
    gguf_io.convert_gguf(str(tmp_path / "q.gguf"), out)
    got = hf.load_params(out, hf.load_config(out))
    err = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), got, params)
    assert max(jax.tree.leaves(err)) < tol, err
    # the un-permutation is right only if q/k land where they came from: error stays at quantization level
    logits = llama.forward(got, np.arange(3, 30)[None], config).logits
    ref = llama.forward(params, np.arange(3, 30)[None], config).logits
    assert float(np.abs(logits - ref).max()) < 20 * tol


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K])
def test_gguf_k_quants_dequantize(tmp_path, qtype):
    """gguf-py cannot quantize K-quants, so blocks are random bytes with sane fp16 scales."""
    config = tiny_config(hidden_size=256, intermediate_size=256, num_heads=4, num_kv_heads=2, head_dim=64,
                         num_layers=1, tie_word_embeddings=True)
    params = llama.init(jax.random.PRNGKey(6), config)
    rng = np.random.default_rng(0)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = {}
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    for fn, v in [(w.add_block_count, 1), (w.add_context_length, 256), (w.add_embedding_length, 256),
                  (w.add_feed_forward_length, 256), (w.add_head_count, 4), (w.add_head_count_kv, 2),
                  (w.add_rope_freq_base, 10000.0), (w.add_layer_norm_rms_eps, 1e-5), (w.add_vocab_size, 128)]:
        fn(v)
    for name, arr in hf_named(config, params):
        if arr.ndim == 1:
            w.add_tensor(name, np.ascontiguousarray(arr, np.float32))
            continue
        data = rng.integers(0, 256, size=(arr.shape[0], arr.shape[1] // block * type_size), dtype=np.uint8)
        scale = np.array([0.001], np.float16).view(np.uint8)
        # d (and dmin) are the last (Q6_K) / first (Q4_K) fp16 fields of each block: keep them small and finite
        for b in range(arr.shape[1] // block):
            off = b * type_size
            if qtype == Q.Q4_K:
                data[:, off:off + 2] = scale
                data[:, off + 2:off + 4] = scale
            else:
                data[:, off + type_size - 2:off + type_size] = scale
        raw[name] = data
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = str(tmp_path / "hf")
    gguf_io.convert_gguf(str(tmp_path / "k.gguf"), out)
    tensors = load_file(os.path.join(out, "model.safetensors"))
    q = quants.dequantize(raw["blk.0.attn_q.weight"], qtype)
    np.testing.assert_array_equal(tensors["model.layers.0.self_attn.q_proj.weight"], gguf_io.unpermute(q, 4))
    up = quants.dequantize(raw["blk.0.ffn_up.weight"], qtype)
    np.testing.assert_array_equal(tensors["model.layers.0.mlp.up_proj.weight"], up)
    assert np.isfinite(up).all() and np.abs(up).max() > 0


def test_gguf_bad_file(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(gguf_io.GGUFError, match="not a readable GGUF file"):
        gguf_io.convert_gguf(str(p), str(tmp_path / "out"))


def test_permute_inverse():
    w = np.random.default_rng(0).standard_normal((6 * 8, 5))
    np.testing.assert_array_equal(gguf_io.unpermute(gguf_io.permute(w, 6), 6), w)


# ------------------------------------------------------------------------------------------ tokenizers


def test_sentencepiece_only_directory(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the judge reads two answers and picks the better one"] * 50 +
                                ["response A is better than response B"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=40,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   minloglevel=2)
    d = tmp_path / "spdir"
    d.mkdir()
    shutil.copy(tmp_path / "sp.model", d / "tokenizer.model")
    tok = tokenizer.load_tokenizer(str(d))
    ids = tok.encode("response A is better", add_special_tokens=False)
    assert ids == spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model")).encode("response A is better")
    assert tok.decode(ids).strip() == "response A is better"
    assert tok.pad_token_id is not None


# --------------------------------------------------------------------------------------- convert command


def test_convert_command_round_trip(tmp_path):
    config = tiny_config()
    params, src = exported(tmp_path, config)
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "setup.py"), tmp_path / "unused")  # noise file
    dst = str(tmp_path / "converted")
    assert convert.main([src, dst]) == 0
    assert tree_equal(hf.load_params(dst, hf.load_config(dst)), params)
    assert convert.main([src, dst]) == 1  # refuses to overwrite
