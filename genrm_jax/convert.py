"""Convert a model to a Hugging Face directory.

    python -m genrm_jax.convert SRC DST [--dtype bfloat16]

SRC: a registered name (smollm2-135m-instruct), a .gguf file or a Hugging Face directory. DST receives
config.json, safetensors weights, the tokenizer and its chat template; `transformers` loads it as
LlamaForCausalLM. Everything goes through the same loader the experiments use. A SRC without a tokenizer is
refused before anything is written (DST could not be loaded), and a failed conversion leaves nothing at DST.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from genrm_jax import runtime
from genrm_jax.io import hf, load_model, registry

# What `tokenizer.load_tokenizer` reads: one of these must be in the source directory.
TOKENIZER_NEEDS = ("tokenizer.json", "tokenizer.model")


def convert(src: str, dst: str, dtype: str = "float32") -> str:
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise FileExistsError(f"{dst}: destination exists and is not an empty directory")
    path = registry.resolve(src)
    if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_NEEDS):
        where = src if os.path.abspath(path) == os.path.abspath(src) else f"{src} (converted to {path})"
        raise ValueError(f"{where}: no tokenizer files ({' or '.join(TOKENIZER_NEEDS)} missing), so {dst} could "
                         "not be loaded; add the model's tokenizer files to the source first")
    model = load_model(path, param_dtype=dtype)  # loads the tokenizer too: one that fails fails here
    created = not os.path.exists(dst)
    try:
        hf.save_hf(model.params, model.config, dst, tokenizer_dir=model.path, dtype=dtype)
    except BaseException:
        if created:
            shutil.rmtree(dst, ignore_errors=True)
        else:  # it was an empty directory: empty it again
            for name in os.listdir(dst):
                p = os.path.join(dst, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.remove(p)
        raise
    return dst


def main(argv=None) -> int:
    runtime.apply()  # an entry point: the CPU allocator and dispatch settings (genrm_jax/runtime.py)
    p = argparse.ArgumentParser(prog="python -m genrm_jax.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="registered name, .gguf file or Hugging Face directory")
    p.add_argument("dst", help="output directory (Hugging Face format)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args(argv)
    t = time.time()
    try:
        convert(args.src, args.dst, args.dtype)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst} ({time.time() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
