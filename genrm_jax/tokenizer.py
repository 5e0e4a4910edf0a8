"""Tokenizer and chat template from a model directory."""
from __future__ import annotations

import os
from typing import Sequence


class TokenizerError(ValueError):
    pass


def load_tokenizer(model_dir: str):
    """`transformers.AutoTokenizer` from the directory (tokenizer.json, or a sentencepiece tokenizer.model)."""
    from transformers import AutoTokenizer

    has_fast = os.path.exists(os.path.join(model_dir, "tokenizer.json"))
    has_spm = os.path.exists(os.path.join(model_dir, "tokenizer.model"))
    if not (has_fast or has_spm):
        raise TokenizerError(f"{model_dir}: no tokenizer (expected tokenizer.json or a sentencepiece tokenizer.model)")
    if has_fast:
        tok = AutoTokenizer.from_pretrained(model_dir)
    else:
        from transformers import LlamaTokenizer  # Llama 2 style: sentencepiece model, dummy-prefix space

        tok = LlamaTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation rendered through the model's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise TokenizerError("the tokenizer has no chat template; pass a model directory with one")
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(out, "keys"):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return list(out)


def fit_prefix(prefix: Sequence[int], completion_lengths: Sequence[int], max_len: int):
    """The prefix cut from the left so that prefix + the longest completion fits in max_len (the one rule by which
    training sequences and judge prompts are fitted).

    Returns (kept_prefix, truncated) or (None, False) when the completion leaves no room for even one prefix
    token (a completion with no context would teach nothing about the prompt).
    """
    room = max_len - max(completion_lengths)
    if room < 1:
        return None, False
    if len(prefix) <= room:
        return list(prefix), False
    return list(prefix[len(prefix) - room:]), True
