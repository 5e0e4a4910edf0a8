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


# llama.cpp's names for the tensors of a llama model (gguf-py's MODEL_TENSORS / llama-arch.cpp), written out here
# rather than taken from gguf_io's tables so that a swapped entry there cannot also swap the test's expectation.
LLAMACPP_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
LLAMACPP_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                  "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                  "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}


def llamacpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`, restated (not gguf_io's): Hugging Face rotate-half rows
    of each head -> interleaved pairs. Called with n_head for attn_q and n_head_kv for attn_k, as llama.cpp does."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name):
    if hf_name in LLAMACPP_TOP:
        return LLAMACPP_TOP[hf_name]
    _, _, i, rest = hf_name.split(".", 3)
    return f"blk.{i}.{LLAMACPP_BLOCK[rest.rsplit('.', 1)[0]]}.weight"


def hf_named(config, params):
    """HF name -> (out, in) array of every tensor, built with hf's export tables."""
    tensors = {}
    for key, name, _, to_hf in hf._top_table(config):
        tensors[name] = np.asarray(to_hf(np.asarray(params[key])), np.float32)
    for key, name, _, to_hf in hf._layer_table(config):
        for i in range(config.num_layers):
            tensors[f"model.layers.{i}.{name}"] = np.asarray(to_hf(np.asarray(params["layers"][key][i])), np.float32)
    return tensors


def gguf_writer(path, config):
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
    return w


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_gguf(path, config, params, qtype):
    """Writes a tiny llama GGUF the way llama.cpp does (q/k rows permuted, (out, in) row-major)."""
    w = gguf_writer(path, config)
    for name, arr in hf_named(config, params).items():
        if name.endswith("q_proj.weight"):
            arr = llamacpp_permute(arr, config.num_heads)
        elif name.endswith("k_proj.weight"):
            arr = llamacpp_permute(arr, config.num_kv_heads)
        arr = np.ascontiguousarray(arr)
        if arr.ndim == 1 or qtype == Q.F32:
            w.add_tensor(gguf_name(name), arr)
        else:
            w.add_tensor(gguf_name(name), quants.quantize(arr, qtype), raw_dtype=qtype)
    finish(w)


def converted(tmp_path, gguf_path):
    out = str(tmp_path / "hf")
    gguf_io.convert_gguf(str(gguf_path), out)
    return out, load_file(os.path.join(out, "model.safetensors"))


@pytest.mark.parametrize("n_head,head_dim,gguf_rows", [
    (1, 4, [0, 2, 1, 3]),  # HF pairs rows (i, i + head_dim/2); llama.cpp stores each pair as rows (2i, 2i+1)
    (1, 8, [0, 4, 1, 5, 2, 6, 3, 7]),  # head_dim 4's order is its own inverse; 8's is not, so this pins the direction
    (2, 4, [0, 2, 1, 3, 4, 6, 5, 7]),  # per head
    (2, 6, [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]),
])
def test_gguf_qk_row_order(n_head, head_dim, gguf_rows):
    rows = n_head * head_dim
    hf_w = np.arange(rows)[:, None] * 10 + np.arange(3)  # row r holds 10r, 10r+1, 10r+2
    gguf_w = np.asarray(gguf_rows)[:, None] * 10 + np.arange(3)
    np.testing.assert_array_equal(llamacpp_permute(hf_w, n_head), gguf_w)
    np.testing.assert_array_equal(gguf_io.permute(hf_w, n_head), gguf_w)
    np.testing.assert_array_equal(gguf_io.unpermute(gguf_w, n_head), hf_w)


def test_gguf_f32_import_is_exact(tmp_path):
    config = tiny_config(hidden_size=64, intermediate_size=128, rms_norm_eps=1e-5)
    params = llama.init(jax.random.PRNGKey(4), config)
    write_gguf(tmp_path / "tiny.gguf", config, params, Q.F32)
    out, tensors = converted(tmp_path, tmp_path / "tiny.gguf")
    want = hf_named(config, params)
    assert sorted(tensors) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(tensors[name], want[name], err_msg=name)
    assert tree_equal(hf.load_params(out, hf.load_config(out)), params)


def quantization_bound(x, qtype):
    """Largest |dequantized - x| ggml's reference quantizer may leave, per element of x (rows of whole blocks), from
    the block formats in ggml-common.h; slack for the fp16 block scale (rel. 2^-11) and float32 arithmetic."""
    if qtype == Q.F16:
        return np.abs(x) * 2.0 ** -11 + 2.0 ** -24  # round to nearest, 11-bit significand (+ subnormal spacing)
    if qtype == Q.BF16:
        return np.abs(x) * 2.0 ** -8
    b = x.reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(b).max(-1, keepdims=True)
    lo, hi = b.min(-1, keepdims=True), b.max(-1, keepdims=True)
    bound = {
        Q.Q8_0: 0.5 * amax / 127 + 127 * (amax / 127) * 2.0 ** -11,  # q = round(x/d), d = amax/127
        # d = -max/8 (-max/16): q = x/d + 8 (16) in [0, 15] ([0, 31]); x = -max is clipped one step short
        Q.Q4_0: amax / 8 * (1 + 16 * 2.0 ** -11),
        Q.Q5_0: amax / 16 * (1 + 32 * 2.0 ** -11),
        # x = min + d*q, d = (max - min)/15 (31): half a step, plus fp16 rounding of d and min
        Q.Q4_1: (hi - lo) / 15 * (0.5 + 15 * 2.0 ** -11) + np.abs(lo) * 2.0 ** -11,
        Q.Q5_1: (hi - lo) / 31 * (0.5 + 31 * 2.0 ** -11) + np.abs(lo) * 2.0 ** -11,
    }[qtype]
    return np.broadcast_to(bound, b.shape).reshape(x.shape) * (1 + 1e-4)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1], ids=lambda t: t.name)
def test_gguf_quantized_import(tmp_path, qtype):
    """gguf-py quantizes the original weights; the import must give them back within the format's error bound, in
    the Hugging Face layout (q/k rows un-permuted, (out, in) orientation), under the right names."""
    config = tiny_config(hidden_size=64, intermediate_size=96)  # rows of whole 32-blocks; non-square MLP
    params = llama.init(jax.random.PRNGKey(5), config)
    write_gguf(tmp_path / "q.gguf", config, params, qtype)
    _, tensors = converted(tmp_path, tmp_path / "q.gguf")
    want = hf_named(config, params)
    assert sorted(tensors) == sorted(want)
    for name, x in want.items():
        assert tensors[name].shape == x.shape, name
        if x.ndim == 1:  # norms stay F32
            np.testing.assert_array_equal(tensors[name], x, err_msg=name)
            continue
        err = np.abs(tensors[name].astype(np.float64) - x)
        bound = quantization_bound(x.astype(np.float64), qtype)
        assert (err <= bound).all(), (name, float(err.max()), float((err / bound).max()))
        assert err.max() > 0, name  # the file really was quantized


# K-quants: gguf-py cannot quantize them, so super-blocks (QK_K = 256 weights) are packed here from integer codes
# and scales by the struct layouts of ggml-common.h and the loops of dequantize_row_q*_K in ggml-quants.c; the
# expected weights are then d * sc * q - dmin * m (Q4_K, Q5_K; 8 sub-blocks of 32) or d * sc * (q - 32) (Q6_K;
# 16 of 16), all exact in float32 (powers of two times small integers).
QK_K = 256


def _f16(x):
    return np.asarray(x, np.float16).reshape(-1, 1).view(np.uint8)


def _k4_scales(sc, m):
    """block_q4_K.scales[12]: the 6-bit sub-block scales/mins as get_scale_min_k4 reads them."""
    out = np.zeros((len(sc), 12), np.uint8)
    out[:, 0:4] = sc[:, :4] | (sc[:, 4:] >> 4) << 6
    out[:, 4:8] = m[:, :4] | (m[:, 4:] >> 4) << 6
    out[:, 8:12] = (sc[:, 4:] & 15) | (m[:, 4:] & 15) << 4
    return out


def _nibbles_q4k(q):
    """qs[128]: sub-blocks 2j and 2j+1 share bytes 32j..32j+31, low then high nibble."""
    q = (q & 15).reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | q[:, :, 1] << 4).reshape(-1, 128)


def pack_k_blocks(qtype, q, d, sc, dmin=None, m=None):
    """One row per super-block: q (n, 256) codes, d/dmin (n,) fp16, sc/m (n, 8) (Q6_K: sc (n, 16) int8)."""
    q = q.astype(np.uint8)
    if qtype == Q.Q4_K:  # d, dmin, scales[12], qs[128]
        return np.concatenate([_f16(d), _f16(dmin), _k4_scales(sc, m), _nibbles_q4k(q)], axis=1)
    if qtype == Q.Q5_K:  # d, dmin, scales[12], qh[32] (bit j of byte l: 5th bit of sub-block j's weight l), qs[128]
        hi = (q.reshape(-1, 8, 32) >> 4) & 1
        qh = (hi << np.arange(8, dtype=np.uint8)[None, :, None]).sum(1).astype(np.uint8)
        return np.concatenate([_f16(d), _f16(dmin), _k4_scales(sc, m), qh, _nibbles_q4k(q)], axis=1)
    assert qtype == Q.Q6_K  # ql[128], qh[64], scales[16] int8, d
    q = q.reshape(-1, 2, 4, 32)  # two halves of 128, four quarters of 32
    ql = ((q[:, :, 0:2] & 15) | (q[:, :, 2:4] & 15) << 4).reshape(-1, 128)
    qh = ((q >> 4) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]).sum(2).astype(np.uint8).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16(d)], axis=1)


def k_quant_matrix(rng, qtype, rows, cols):
    """(expected HF float matrix, per-super-block fields in row order) for a random (rows, cols) K-quant matrix."""
    n = rows * cols // QK_K
    d = rng.choice([2.0 ** -8, 2.0 ** -7, 2.0 ** -6], n)
    if qtype == Q.Q6_K:
        q = rng.integers(0, 64, (n, QK_K))
        sc = rng.integers(-128, 128, (n, 16))
        x = d[:, None, None] * sc[:, :, None] * (q.reshape(n, 16, 16) - 32)
        fields = dict(q=q, d=d, sc=sc)
    else:
        q = rng.integers(0, 16 if qtype == Q.Q4_K else 32, (n, QK_K))
        sc, m = rng.integers(0, 64, (n, 8)), rng.integers(0, 64, (n, 8))
        dmin = rng.choice([2.0 ** -7, 2.0 ** -5], n)
        x = d[:, None, None] * sc[:, :, None] * q.reshape(n, 8, 32) - (dmin[:, None] * m)[:, :, None]
        fields = dict(q=q, d=d, sc=sc, dmin=dmin, m=m)
    return x.reshape(rows, cols).astype(np.float32), {k: v.reshape(rows, cols // QK_K, *v.shape[1:])
                                                      for k, v in fields.items()}


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda t: t.name)
def test_gguf_k_quants_import(tmp_path, qtype):
    """Hand-packed K-quant blocks import to the exact weights they encode, q/k rows back in HF order."""
    config = tiny_config(hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=2, head_dim=64,
                         num_layers=1)
    rng = np.random.default_rng(0)
    w = gguf_writer(tmp_path / "k.gguf", config)
    want = {}
    for name, shape, heads in [("model.layers.0.self_attn.q_proj.weight", (256, 256), 4),
                               ("model.layers.0.self_attn.k_proj.weight", (128, 256), 2),
                               ("model.layers.0.mlp.down_proj.weight", (256, 512), None)]:
        want[name], fields = k_quant_matrix(rng, qtype, *shape)
        if heads:  # llama.cpp's row order: GGUF row i is HF row order[i]
            order = llamacpp_permute(np.arange(shape[0]), heads)
            fields = {k: v[order] for k, v in fields.items()}
        blocks = pack_k_blocks(qtype, **{k: v.reshape(-1, *v.shape[2:]) for k, v in fields.items()})
        w.add_tensor(gguf_name(name), blocks.reshape(shape[0], -1), raw_dtype=qtype)
    finish(w)
    _, tensors = converted(tmp_path, tmp_path / "k.gguf")
    assert sorted(tensors) == sorted(want)
    for name, x in want.items():
        assert np.abs(x).max() > 1 and len(np.unique(x)) > 100
        np.testing.assert_array_equal(tensors[name], x, err_msg=name)


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


def under_umask(mask, fn, *args):
    """fn(*args) with the process umask set to `mask`."""
    old = os.umask(mask)
    try:
        return fn(*args)
    finally:
        os.umask(old)


def modes(root):
    """{relative path: permission bits} of a directory and everything under it."""
    import stat

    out = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = stat.S_IMODE(os.stat(p).st_mode)
    return out


def test_convert_command_round_trip(tmp_path):
    """End to end on a real Hugging Face directory with a tokenizer: the output loads in genrm_jax and in
    transformers, with the same weights, tokenizer and logits."""
    from tinyhf import make_model_dir

    src = make_model_dir(str(tmp_path / "src"))
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "setup.py"), tmp_path / "unused")  # noise file
    dst = str(tmp_path / "converted")
    assert under_umask(0o022, convert.main, [src, dst]) == 0
    assert set(modes(dst).values()) == {0o755, 0o644}  # safetensors alone would write 0600
    ours, orig = load_model(dst), load_model(src)
    assert tree_equal(ours.params, orig.params)
    messages = [{"role": "user", "content": "Which answer is better, A or B?"}]
    ids = tokenizer.chat_ids(ours.tokenizer, messages)
    assert ids == tokenizer.chat_ids(orig.tokenizer, messages) and ours.tokenizer.eos_token_id == 2
    model = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    tokens = np.asarray(ids)[None]
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
    assert np.abs(np.asarray(llama.forward(ours.params, tokens, ours.config).logits) - ref).max() <= 1e-4
    assert transformers.AutoTokenizer.from_pretrained(dst).encode("Which answer?") == \
        ours.tokenizer.encode("Which answer?")
    assert convert.main([src, dst]) == 1  # refuses to overwrite


def test_convert_refuses_a_source_without_tokenizer(tmp_path, capsys, monkeypatch):
    _, src = exported(tmp_path, tiny_config())  # weights and config.json only
    read = []
    monkeypatch.setattr(hf, "load_params", lambda *a, **k: read.append(1))
    dst = tmp_path / "out"
    assert convert.main([src, str(dst)]) == 1
    err = capsys.readouterr()
    assert f"error: {src}: no tokenizer files (tokenizer.json or tokenizer.model missing)" in err.err
    assert "wrote" not in err.out and not dst.exists() and not read
    dst.mkdir()  # an empty directory given as DST stays empty
    assert convert.main([src, str(dst)]) == 1 and os.listdir(dst) == []
    # a GGUF without tokenizer data is refused the same way (its conversion lands in the cache, not at DST)
    monkeypatch.setenv("GENRM_JAX_HOME", str(tmp_path / "home"))
    config = tiny_config()
    write_gguf(tmp_path / "notok.gguf", config, llama.init(jax.random.PRNGKey(0), config), Q.F32)
    assert convert.main([str(tmp_path / "notok.gguf"), str(tmp_path / "out2")]) == 1
    assert "notok.gguf (converted to " in capsys.readouterr().err and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_gguf_cache_follows_the_umask(tmp_path, monkeypatch, mask):
    """A converted model in the cache gets the modes of the process umask, not mkdtemp's 0700 / safetensors'
    0600, so that a cache shared between users is readable by all of them."""
    monkeypatch.setenv("GENRM_JAX_HOME", str(tmp_path / "home"))
    config = tiny_config()
    write_gguf(tmp_path / "tiny.gguf", config, llama.init(jax.random.PRNGKey(0), config), Q.F32)
    out = under_umask(mask, registry.resolve, str(tmp_path / "tiny.gguf"))
    got = modes(out)
    assert {"config.json", "model.safetensors"} <= set(got)
    assert got == {p: (0o777 if p == "." else 0o666) & ~mask for p in got}
    assert registry.resolve(str(tmp_path / "tiny.gguf")) == out  # converted once
