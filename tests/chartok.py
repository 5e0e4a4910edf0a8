"""A character-level tokenizer with a ChatML-like template, small enough for the tiny test model (vocab 128).

It implements the slice of the `transformers` tokenizer API the data pipeline uses, so pipeline and training
tests run without loading the real model.
"""
from __future__ import annotations


class CharTokenizer:
    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 0
    chat_template = "chatml-like (test)"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        # printable ASCII 32..126 -> 3..97; newline -> 98; anything else -> 99
        return [(ord(c) - 29) if 32 <= ord(c) <= 126 else 98 if c == "\n" else 99 for c in text]

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=True):
        ids = []
        for m in messages:
            ids += [self.bos_token_id] + self.encode(m["role"] + ":" + m["content"]) + [self.eos_token_id]
        if add_generation_prompt:
            ids += [self.bos_token_id] + self.encode("assistant:")
        return ids

    def decode(self, ids) -> str:
        return "".join(chr(i + 29) if 3 <= i <= 97 else "\n" if i == 98 else "" for i in ids)
