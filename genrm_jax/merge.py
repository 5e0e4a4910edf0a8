"""Linear weight merging of two judges: θ = α·θ_a + (1 − α)·θ_b (Self-Rationalization's seed judge J_SFT is a
pointwise and a pairwise SFT judge merged this way).

Both parents must come from the same model: the same config and, leaf by leaf, the same tree path, shape and
dtype. Anything else is refused with the first tensor that differs named, since a merge of unrelated weights
would still "work" numerically and produce a broken model silently.

    python -m genrm_jax.merge POINTWISE_JUDGE PAIRWISE_JUDGE OUT_DIR --alpha 0.5

merges two saved judges (registered names, GGUF files or Hugging Face directories, e.g. two runs' export/) into
a Hugging Face directory with the first one's tokenizer.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from genrm_jax import runtime
from genrm_jax.io import hf, load_model


class MergeError(ValueError):
    """The two parents cannot be merged; the message names the first difference."""


def _path(keypath) -> str:
    return jax.tree_util.keystr(keypath)


def check_compatible(a, b, config_a=None, config_b=None) -> None:
    """Raises MergeError naming the first tensor (tree path) in which `a` and `b` differ in presence, shape or
    dtype, or else the first config field that differs."""
    la, _ = jax.tree_util.tree_flatten_with_path(a)
    lb, _ = jax.tree_util.tree_flatten_with_path(b)
    paths_a, paths_b = [_path(p) for p, _ in la], [_path(p) for p, _ in lb]
    for pa, pb in zip(paths_a, paths_b):
        if pa != pb:
            raise MergeError(f"the parameter trees differ: {pa} vs {pb}")
    if len(paths_a) != len(paths_b):
        extra = (paths_a if len(paths_a) > len(paths_b) else paths_b)[min(len(paths_a), len(paths_b))]
        raise MergeError(f"the parameter trees differ: {extra} is in one model only")
    for (p, x), (_, y) in zip(la, lb):
        if x.shape != y.shape or x.dtype != y.dtype:
            raise MergeError(f"tensor {_path(p)} differs: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
    if config_a is not None and config_b is not None and config_a != config_b:  # same shapes, other maths
        fa, fb = vars(config_a), vars(config_b)
        field = next(k for k in fa if fa[k] != fb.get(k))
        raise MergeError(f"the models' configs differ: {field} = {fa[field]!r} vs {fb.get(field)!r}")


def linear(a, b, alpha: float, config_a=None, config_b=None):
    """α·a + (1 − α)·b, leaf by leaf, in each leaf's dtype (computed in float32). α = 1 returns `a`'s values and
    α = 0 `b`'s exactly."""
    if not 0.0 <= alpha <= 1.0:
        raise MergeError(f"alpha must be in [0, 1], got {alpha!r}")
    check_compatible(a, b, config_a, config_b)

    def mix(x, y):
        if alpha == 1.0:
            return jnp.array(x, copy=True)
        if alpha == 0.0:
            return jnp.array(y, copy=True)
        return (alpha * jnp.asarray(x, jnp.float32) + (1.0 - alpha) * jnp.asarray(y, jnp.float32)).astype(x.dtype)

    return jax.tree.map(mix, a, b)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m genrm_jax.merge", description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the judge weighted alpha (registered name, .gguf file or Hugging Face directory)")
    p.add_argument("b", help="the judge weighted 1 - alpha")
    p.add_argument("out", help="output Hugging Face directory")
    p.add_argument("--alpha", type=float, default=0.5)
    args = p.parse_args(argv)

    runtime.apply()
    try:
        a, b = load_model(args.a), load_model(args.b)
        merged = linear(a.params, b.params, args.alpha, a.config, b.config)
        hf.save_hf(merged, a.config, args.out, tokenizer_dir=a.path)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {args.alpha} x {args.a} + {1 - args.alpha} x {args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
