"""GGUF (llama.cpp) import: dequantize through the `gguf` package and write a Hugging Face directory.

llama.cpp stores each head's RoPE dimensions of attn_q / attn_k as interleaved pairs; `unpermute` restores
Hugging Face's rotate-half layout. Arrays from `gguf.quants.dequantize` are already (out, in), as HF's.
"""
from __future__ import annotations

import json
import os

import numpy as np

from genrm_jax.models import llama

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")

_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


class GGUFError(ValueError):
    pass


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's convert_hf_to_gguf `permute` for q/k projection rows."""
    out_dim, in_dim = w.shape
    head_dim = out_dim // n_head
    return w.reshape(n_head, head_dim // 2, 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (used by tests to build GGUF files the way llama.cpp does)."""
    out_dim, in_dim = w.shape
    head_dim = out_dim // n_head
    return w.reshape(n_head, 2, head_dim // 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def hf_config(reader, path: str) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise GGUFError(f"{path}: unsupported general.architecture={arch!r} (only 'llama')")
    p = f"{arch}."
    for key in ("block_count", "embedding_length", "feed_forward_length", "attention.head_count"):
        if p + key not in reader.fields:
            raise GGUFError(f"{path}: missing metadata {p + key!r}")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise GGUFError(f"{path}: tensor 'rope_freqs.weight' (llama3 RoPE scaling in GGUF form) is not supported; "
                        "load the Hugging Face directory of this model instead")
    heads = int(_field(reader, p + "attention.head_count"))
    hidden = int(_field(reader, p + "embedding_length"))
    names = {t.name for t in reader.tensors}
    vocab = _field(reader, p + "vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, p + "feed_forward_length")),
        "num_hidden_layers": int(_field(reader, p + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, p + "attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, p + "rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(f"{float(_field(reader, p + 'attention.layer_norm_rms_epsilon', 1e-5)):.7g}"),
        "rope_theta": float(_field(reader, p + "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_field(reader, p + "context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }


def iter_hf_tensors(reader, config: dict, path: str):
    """Yields (HF name, float32 array) for every tensor, dequantized and un-permuted."""
    from gguf import quants

    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in SUPPORTED_TYPES:
            raise GGUFError(f"{path}: tensor {t.name!r} has unsupported type {kind} (supported: {SUPPORTED_TYPES})")
        if t.name in _TOP:
            name = _TOP[t.name]
        else:
            parts = t.name.split(".")
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _BLOCK:
                raise GGUFError(f"{path}: unexpected tensor {t.name!r} for a llama model")
            name = f"model.layers.{parts[1]}.{_BLOCK[parts[2]]}.weight"
        w = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, config["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, config["num_key_value_heads"])
        yield name, w


def convert_gguf(path: str, out_dir: str) -> None:
    """GGUF file -> Hugging Face directory (fp32 safetensors, config.json, tokenizer with chat template)."""
    import gguf
    from safetensors.numpy import save_file

    if not os.path.exists(path):
        raise GGUFError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the gguf package raises bare ValueErrors/struct errors on bad files
        raise GGUFError(f"{path}: not a readable GGUF file: {e}") from None
    config = hf_config(reader, path)
    llama.config_from_hf(config, source=path)  # validate before the slow part
    tensors = dict(iter_hf_tensors(reader, config, path))
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    del tensors
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    _save_tokenizer(path, out_dir, reader)


def _save_tokenizer(path: str, out_dir: str, reader) -> None:
    if "tokenizer.ggml.tokens" not in reader.fields:
        return
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    template = _field(reader, "tokenizer.chat_template")
    if template and not getattr(tok, "chat_template", None):
        tok.chat_template = template
    tok.save_pretrained(out_dir)
