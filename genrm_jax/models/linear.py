"""Weight matmuls (`dense`) and the tied unembedding, with a backward pass laid out for XLA:CPU.

Autodiff of `y = x @ w` gives the weight gradient as a contraction over tokens, the major axis of both x and
dy. XLA:CPU's GEMM takes that only with one operand transposed, and its layout assignment transposes the *wider*
operand inside the loop fusion that produced it (silu(gate) * up in the MLP): a strided loop that cost ~2 s of
a 17 s training step (SmolLM2, 4 x 512 tokens), and it computed that elementwise work twice, once per layout.
The VJPs here transpose the narrower of x and dy as a plain copy and contract in the orientation the kernel
takes directly: fwd + bwd 17.0 -> 14.3 s on this 2-core CPU. `kernels="xla"` (accelerators; `LlamaConfig.kernels`
decides) keeps plain autodiff, where sharding propagation is best understood.

Every output is tagged `DENSE` (a `checkpoint_name`), so the remat policy "dense" keeps exactly the weight
matmuls' outputs: a custom VJP hides its dot from JAX's dot-based policies.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

DENSE = "dense"


def dense(x, w, axes: int = 1, kernels: str = "xla"):
    """Contract the last `axes` axes of x with the first `axes` of w: [..., *in] x [*in, *out] -> [..., *out].
    `kernels`: "cpu" (the VJP above) or "xla" (autodiff)."""
    w = w.astype(x.dtype)
    y = (_dense_cpu if kernels == "cpu" else _matmul)(x, w, axes)
    return checkpoint_name(y, DENSE)


def _matmul(x, w, axes):
    return jnp.tensordot(x, w, axes)


def _as_matrices(x, w, axes):
    k = math.prod(w.shape[:axes])
    return x.reshape(-1, k), w.reshape(k, -1)


_dense_cpu = partial(jax.custom_vjp, nondiff_argnums=(2,))(_matmul)


def _dense_fwd(x, w, axes):
    return _dense_cpu(x, w, axes), (x, w)


def _dense_bwd(axes, res, dy):
    x, w = res
    x2, w2 = _as_matrices(x, w, axes)
    dy2 = dy.reshape(x2.shape[0], -1)
    dx = jax.lax.dot_general(dy2, w2, (((1,), (1,)), ((), ())))  # dy @ w.T: the kernel reads w.T in place
    return dx.reshape(x.shape), _weight_grad(x2, dy2).reshape(w.shape)


def _weight_grad(x2, dy2):
    """x2.T @ dy2 ([T, I] x [T, O] -> [I, O]), transposing whichever of the two is narrower."""
    if x2.shape[1] <= dy2.shape[1]:
        return _transposed(x2) @ dy2
    return _transposed(_transposed(dy2) @ x2)


def _transposed(a):
    # The barrier keeps XLA from folding the transpose into the dot (as an operand's, or as the product's by
    # swapping the operands): a dot contracting the major axis of an operand falls back to a generic kernel at
    # half the speed (81 vs 169 GFLOP/s for [576, 2048] x [2048, 49152] here).
    return jax.lax.optimization_barrier(jax.lax.optimization_barrier(a).T)


_dense_cpu.defvjp(_dense_fwd, _dense_bwd)


def unembed_tied(hidden, embedding, kernels: str = "xla"):
    """hidden [..., D] x embedding [V, D] -> float32 logits [..., V]."""
    return (_unembed_cpu if kernels == "cpu" else _logits)(hidden, embedding.astype(hidden.dtype))


def _logits(hidden, embedding):
    return jnp.einsum("...d,vd->...v", hidden, embedding, preferred_element_type=jnp.float32)


_unembed_cpu = jax.custom_vjp(_logits)


def _unembed_fwd(hidden, embedding):
    return _unembed_cpu(hidden, embedding), (hidden, embedding)


def _unembed_bwd(res, dlogits):
    hidden, embedding = res
    h2 = hidden.reshape(-1, hidden.shape[-1])
    d2 = dlogits.reshape(h2.shape[0], -1).astype(hidden.dtype)
    dh = jnp.dot(d2, embedding, preferred_element_type=jnp.float32).astype(hidden.dtype)
    de = _transposed(_weight_grad(h2, d2))  # the [D, V] product needs only the small hidden state transposed
    return dh.reshape(hidden.shape), de.astype(embedding.dtype)


_unembed_cpu.defvjp(_unembed_fwd, _unembed_bwd)
