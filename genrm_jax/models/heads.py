"""Scalar reward head on the final hidden state (Bradley-Terry and PairRM).

The head reads the hidden state of the last real token: with right padding that is index
`sum(mask) - 1`; with left padding it is the final position. `last_token_index` handles both.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from genrm_jax.models import llama


def init(rng, config: llama.LlamaConfig) -> dict:
    # Small init so that rewards start near 0 and BT/PairRM losses start near log 2.
    w = jax.random.normal(rng, (config.hidden_size,), jnp.float32) * (config.hidden_size ** -0.5) * 0.1
    return {"w": w.astype(config.param_dtype), "b": jnp.zeros((), config.param_dtype)}


def logical_axes() -> dict:
    return {"w": ("embed",), "b": ()}


def last_token_index(mask):
    """Index of the last 1 in each row of mask [B, T]."""
    t = mask.shape[1]
    return (t - 1) - jnp.argmax(mask[:, ::-1] > 0, axis=1)


def scalar_reward(params: llama.Params, head: dict, tokens, mask, config: llama.LlamaConfig):
    """Reward per sequence [B] (float32): w · h_last + b on the final-normed hidden state."""
    out = llama.forward(params, tokens, config, attention_mask=mask, logits=False, return_hidden=True)
    idx = last_token_index(mask)
    h = jnp.take_along_axis(out.hidden, idx[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    return h @ head["w"].astype(jnp.float32) + head["b"].astype(jnp.float32)
