"""A tiny random-weight Llama with a byte-level tokenizer and a ChatML template, as a real Hugging Face directory:
the `smoke` presets and the tests run every experiment end to end in seconds through the one loader.

Registered as the model name "tiny-random" (created once under $GENRM_JAX_HOME/models/tiny-random).
"""
from __future__ import annotations

import json
import os

from genrm_jax.io import hf
from genrm_jax.models import llama

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=16, rope_theta=10000.0, max_position_embeddings=4096, bos_token_id=1, eos_token_ids=(2,),
            pad_token_id=2)


def write_tokenizer(out_dir: str) -> int:
    """Byte-level BPE with no merges (every byte one token) after the three special tokens; returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>",
                   "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>",
                   "chat_template": CHATML, "model_max_length": TINY["max_position_embeddings"]}, f)
    return len(vocab)


def make_model_dir(out_dir: str, seed: int = 0, **config_kw) -> str:
    """Writes the tiny Llama (vocab 320 > the tokenizer's 259 tokens), its config and tokenizer into out_dir."""
    import jax


    config = llama.LlamaConfig(**{**TINY, **config_kw})
    hf.save_hf(llama.init(jax.random.PRNGKey(seed), config), config, out_dir)
    write_tokenizer(out_dir)
    return out_dir
