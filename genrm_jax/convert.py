"""Convert a model to a Hugging Face directory.

    python -m genrm_jax.convert SRC DST [--dtype bfloat16]

SRC: a registered name (smollm2-135m-instruct), a .gguf file or a Hugging Face directory. DST receives
config.json, safetensors weights, the tokenizer and its chat template; `transformers` loads it as
LlamaForCausalLM. Everything goes through the same loader the experiments use.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def convert(src: str, dst: str, dtype: str = "float32") -> str:
    from genrm_jax.io import hf, load_model

    if os.path.exists(dst) and os.listdir(dst):
        raise FileExistsError(f"{dst}: destination exists and is not empty")
    model = load_model(src, param_dtype=dtype, tokenizer=False)
    hf.save_hf(model.params, model.config, dst, tokenizer_dir=model.path, dtype=dtype)
    return dst


def main(argv=None) -> int:
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
