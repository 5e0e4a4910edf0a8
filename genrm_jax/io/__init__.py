"""Checkpoint I/O: Hugging Face directories, GGUF files, registered names."""
from __future__ import annotations

import dataclasses
from typing import Any

from genrm_jax import sharding
from genrm_jax import tokenizer as tok_lib
from genrm_jax.io import hf, registry
from genrm_jax.models import llama


@dataclasses.dataclass
class Model:
    config: llama.LlamaConfig
    params: llama.Params
    tokenizer: Any
    path: str  # the Hugging Face directory it was read from


def load_model(name_or_path: str = registry.DEFAULT_MODEL, *, param_dtype: str = "float32",
               compute_dtype: str | None = None, scan_layers: bool = True, shardings=None, mesh=None,
               tokenizer: bool = True) -> Model:
    """One loader for registered names, GGUF files and Hugging Face directories (`scan_layers`: see LlamaConfig).

    `mesh`: the params are sharded over it by their logical axes (sharding.shardings), each host reading only the
    slices its devices hold; `shardings` gives them explicitly instead.
    """
    path = registry.resolve(name_or_path)
    config = hf.load_config(path, param_dtype=param_dtype, compute_dtype=compute_dtype or param_dtype,
                            scan_layers=scan_layers)
    tok = tok_lib.load_tokenizer(path) if tokenizer else None  # fail on a missing tokenizer before reading weights
    if mesh is not None and shardings is None:
        shardings = sharding.shardings(llama.logical_axes(config), mesh)
    params = hf.load_params(path, config, shardings=shardings)
    return Model(config, params, tok, path)
