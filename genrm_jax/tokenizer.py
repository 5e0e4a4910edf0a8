"""Tokenizer and chat template from a model directory."""
from __future__ import annotations

import os


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
