"""The weight matmuls and the tied unembedding, with either kernels ("cpu": hand-written VJPs; "xla": autodiff),
equal autodiff of the plain einsum."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from jax.ad_checkpoint import print_saved_residuals

from genrm_jax.models import linear, llama


def _grads(f, *args):
    out, vjp = jax.vjp(f, *args)
    cot = jax.random.normal(jax.random.PRNGKey(9), out.shape, out.dtype)
    return out, vjp(cot)


@pytest.mark.parametrize("kernels", ["cpu", "xla"])
@pytest.mark.parametrize("x_shape,w_shape,axes,spec", [
    ((2, 5, 8), (8, 24), 1, "btd,df->btf"),        # wide output: x is the operand transposed
    ((2, 5, 24), (24, 8), 1, "btf,fd->btd"),       # narrow output: dy is transposed instead
    ((2, 5, 8), (8, 3, 4), 1, "btd,dhk->bthk"),    # q/k/v projections
    ((2, 5, 3, 4), (3, 4, 8), 2, "bthk,hkd->btd"),  # output projection
])
def test_dense_matches_einsum_autodiff(x_shape, w_shape, axes, spec, kernels):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    out, (dx, dw) = _grads(lambda x, w: linear.dense(x, w, axes, kernels), x, w)
    ref, (rdx, rdw) = _grads(lambda x, w: jnp.einsum(spec, x, w), x, w)
    for a, b in ((out, ref), (dx, rdx), (dw, rdw)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernels", ["cpu", "xla"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tied_unembedding_matches_einsum_autodiff(dtype, kernels):
    kh, ke = jax.random.split(jax.random.PRNGKey(1))
    h, e = jax.random.normal(kh, (2, 5, 8), dtype), jax.random.normal(ke, (40, 8), jnp.float32)
    out, (dh, de) = _grads(lambda h, e: linear.unembed_tied(h, e, kernels), h, e)
    ref, (rdh, rde) = _grads(
        lambda h, e: jnp.einsum("btd,vd->btv", h, e.astype(h.dtype), preferred_element_type=jnp.float32), h, e)
    assert out.dtype == jnp.float32 and dh.dtype == dtype and de.dtype == jnp.float32
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    for a, b in ((out, ref), (dh, rdh), (de, rde)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("kernels", ["cpu", "xla"])
def test_dense_remat_policy_keeps_the_weight_matmul_outputs(capsys, kernels):
    """Custom VJPs hide their dots from JAX's dot-based policies; "dense" saves them by name instead."""
    cfg = tiny_config(num_layers=1, kernels=kernels)
    params = llama.unstack_layers(llama.init(jax.random.PRNGKey(0), cfg))  # unrolled: a scan hides the names
    tokens = jnp.ones((1, 6), jnp.int32)

    def loss(p, policy):
        return llama.forward(p, tokens, cfg.replace(remat=True, remat_policy=policy)).logits.sum()

    def named(policy):
        print_saved_residuals(lambda p: loss(p, policy), params)
        return [line for line in capsys.readouterr().out.splitlines() if f"named '{linear.DENSE}'" in line]

    # q, k, v, attention output, its projection, gate, up, silu(gate) * up (the down projection feeds only the
    # residual add, whose backward does not need it)
    assert len(named("dense")) == 8, named("dense")
    assert named("") == []


def test_unknown_remat_policy_is_an_error():
    with pytest.raises(ValueError, match="remat_policy 'dots'"):
        llama.remat_policy("dots")
