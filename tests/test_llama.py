"""Pure-JAX Llama against Hugging Face transformers (torch, fp32) on tiny random configs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import tiny_config
from genrm_jax.io import hf
from genrm_jax.models import attention, llama

torch.set_num_threads(2)

HF_CONFIGS = {
    "gqa_untied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "llama3_rope_tied": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
                             rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0, original_max_position_embeddings=16)),
    "mha_wide_heads": dict(num_attention_heads=2, num_key_value_heads=2, head_dim=48, tie_word_embeddings=False,
                           rope_theta=500000.0),
}


def make_hf_model(tmp_path, **kw):
    cfg = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=3, rms_norm_eps=1e-5,
               max_position_embeddings=128, initializer_range=0.1, bos_token_id=1, eos_token_id=2)
    cfg.update(kw)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    with torch.no_grad():  # HF inits norms to 1; random norms exercise the weight handling too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model


def hf_logits(model, tokens, mask=None):
    with torch.no_grad():
        t = torch.tensor(np.asarray(tokens))
        m = None if mask is None else torch.tensor(np.asarray(mask))
        return model(input_ids=t, attention_mask=m).logits.numpy()


# Both kernel sets run here on CPU: "xla" is the code accelerators run, "cpu" the XLA:CPU-tuned variants.
KERNELS = ["cpu", "xla"]


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_parity_with_transformers(tmp_path, name, kernels):
    model = make_hf_model(tmp_path, **HF_CONFIGS[name])
    config = hf.load_config(str(tmp_path)).replace(kernels=kernels)
    params = hf.load_params(str(tmp_path), config)
    tokens = np.random.default_rng(0).integers(0, 96, size=(2, 40))  # 40 > original_max (16) for llama3
    ours = np.asarray(jax.jit(lambda p, t: llama.forward(p, t, config).logits)(params, tokens))
    ref = hf_logits(model, tokens)
    assert np.abs(ours - ref).max() <= 1e-4, np.abs(ours - ref).max()


@pytest.mark.parametrize("kernels", KERNELS)
def test_left_padding_matches_transformers(tmp_path, kernels):
    model = make_hf_model(tmp_path, **HF_CONFIGS["gqa_untied"])
    config = hf.load_config(str(tmp_path)).replace(kernels=kernels)
    params = hf.load_params(str(tmp_path), config)
    tokens = np.random.default_rng(1).integers(3, 96, size=(2, 12))
    mask = np.ones_like(tokens)
    mask[0, :5] = 0
    tokens[0, :5] = 0
    ours = np.asarray(llama.forward(params, tokens, config, attention_mask=mask).logits)
    ref = hf_logits(model, tokens, mask)
    assert np.abs(ours[mask == 1] - ref[mask == 1]).max() <= 1e-4


def test_padding_and_packing_do_not_change_logits(tiny):
    params = llama.init(jax.random.PRNGKey(0), tiny)
    a = jnp.arange(3, 10)[None]
    b = jnp.arange(20, 25)[None]
    alone_a = llama.forward(params, a, tiny).logits[0]
    alone_b = llama.forward(params, b, tiny).logits[0]
    packed = jnp.concatenate([a, b, jnp.zeros((1, 3), int)], axis=1)
    seg = jnp.asarray([[1] * 7 + [2] * 5 + [0] * 3])
    out = llama.forward(params, packed, tiny, segment_ids=seg).logits[0]
    np.testing.assert_allclose(out[:7], alone_a, atol=1e-5)
    np.testing.assert_allclose(out[7:12], alone_b, atol=1e-5)


def test_unrolled_equals_scanned_and_remat(tiny):
    params = llama.init(jax.random.PRNGKey(1), tiny)
    tokens = jnp.arange(16)[None] % tiny.vocab_size
    ref = llama.forward(params, tokens, tiny).logits
    unrolled = llama.forward(llama.unstack_layers(params), tokens, tiny).logits
    remat = llama.forward(params, tokens, tiny.replace(remat=True)).logits
    np.testing.assert_allclose(unrolled, ref, atol=1e-6)
    np.testing.assert_allclose(remat, ref, atol=1e-6)
    restacked = llama.stack_layers(llama.unstack_layers(params))
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), restacked, params))


def test_rope_table_equals_in_graph_rope(tiny):
    cfg = tiny.replace(rope_theta=500000.0)
    positions = jnp.asarray([[0, 1, 5, 63], [7, 7, 0, 100]])
    computed = llama.rope(positions, cfg)
    looked_up = llama.rope(positions, cfg, max_position=101)
    for a, b in zip(computed, looked_up):
        assert a.shape == b.shape == (2, 4, cfg.head_dim // 2)
        np.testing.assert_allclose(b, a, atol=2e-5)
    assert not np.allclose(computed[0][1, 3], computed[0][1, 2])  # positions 100 and 0 differ


def test_bf16_params_and_compute(tiny):
    params = llama.init(jax.random.PRNGKey(2), tiny)
    cfg16 = tiny.replace(param_dtype="bfloat16", compute_dtype="bfloat16")
    params16 = llama.init(jax.random.PRNGKey(2), cfg16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params16))
    tokens = jnp.arange(12)[None] + 3
    ref = llama.forward(params, tokens, tiny).logits
    out = llama.forward(params16, tokens, cfg16).logits
    assert out.dtype == jnp.float32
    # bf16 keeps ~3 significant digits; logits of this tiny model are O(0.1)
    assert float(jnp.abs(out - ref).max()) < 0.05


def test_unscanned_layers_give_the_same_loss_and_gradients(tiny):
    cfg = tiny.replace(scan_layers=False, remat=True, remat_policy="dense")
    params = llama.init(jax.random.PRNGKey(4), cfg)
    assert isinstance(params["layers"], list) and len(params["layers"]) == cfg.num_layers
    assert "layers" not in llama.logical_axes(cfg)["layers"][0]["wq"]
    stacked = llama.arrange_layers(params, cfg.replace(scan_layers=True))
    tokens = jnp.arange(24).reshape(2, 12) % cfg.vocab_size

    def loss(p, c):
        return jnp.mean(jax.nn.logsumexp(llama.forward(p, tokens, c).logits, axis=-1))

    l_unrolled, g_unrolled = jax.value_and_grad(loss)(params, cfg)
    l_scanned, g_scanned = jax.value_and_grad(loss)(stacked, cfg.replace(scan_layers=True))
    np.testing.assert_allclose(l_unrolled, l_scanned, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(llama.stack_layers(g_unrolled)), jax.tree.leaves(g_scanned)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_cpu_and_xla_kernels_give_the_same_loss_and_gradients(tiny, tied):
    """The training step's maths is one definition: the kernel choice changes neither values nor gradients
    (remat "dense" as the trainer runs it, packed segments and padding included)."""
    cfg = tiny.replace(remat=True, remat_policy="dense", tie_word_embeddings=tied)
    params = llama.init(jax.random.PRNGKey(5), cfg)
    tokens = jnp.arange(64).reshape(2, 32) * 7 % cfg.vocab_size
    seg = jnp.asarray([[1] * 20 + [2] * 12, [0] * 4 + [1] * 28])

    def loss(p, kernels):
        logits = llama.forward(p, tokens, cfg.replace(kernels=kernels), segment_ids=seg).logits
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) * (seg > 0))

    (l_cpu, g_cpu), (l_xla, g_xla) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, k) for k in KERNELS)
    np.testing.assert_allclose(l_cpu, l_xla, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_cpu), jax.tree.leaves(g_xla)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_kernels_are_chosen_by_the_config(tiny):
    auto = {"cpu": "cpu", "gpu": "cudnn", "tpu": "splash"}.get(jax.default_backend(), "xla")
    assert llama.resolve_kernels(tiny) == auto  # "auto"
    for kernels in ("xla", "cudnn", "splash"):
        assert llama.resolve_kernels(tiny.replace(kernels=kernels)) == kernels
    with pytest.raises(ValueError, match="kernels='gpu'"):
        tiny.replace(kernels="gpu")


@pytest.mark.parametrize("scan_layers", [True, False])
def test_logical_axes_cover_every_param(tiny, scan_layers):
    tiny = tiny.replace(scan_layers=scan_layers)
    params = llama.init(jax.random.PRNGKey(0), tiny)
    axes = llama.logical_axes(tiny)
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    flat_a = dict(jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, tuple)))
    assert len(flat_p) == len(flat_a)
    for path, p in flat_p:
        assert len(flat_a[path]) == p.ndim, path
    assert sum(p.size for _, p in flat_p) == tiny.num_params


def test_unsupported_configs_name_the_field():
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2)
    with pytest.raises(ValueError, match="model_type='mistral'"):
        llama.config_from_hf({**base, "model_type": "mistral"})
    with pytest.raises(ValueError, match="sliding_window"):
        llama.config_from_hf({**base, "sliding_window": 4096})
    with pytest.raises(ValueError, match="attention_bias"):
        llama.config_from_hf({**base, "attention_bias": True})
    with pytest.raises(ValueError, match="rope_type"):
        llama.config_from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="missing required field 'hidden_size'"):
        llama.config_from_hf({k: v for k, v in base.items() if k != "hidden_size"})
    # transformers 5 style rope_parameters is understood
    cfg = llama.config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert cfg.rope_theta == 5e5


def test_sharded_forward_matches(tiny):
    from genrm_jax import sharding

    params = llama.init(jax.random.PRNGKey(0), tiny)
    mesh = sharding.make_mesh()
    placed = jax.device_put(params, sharding.shardings(llama.logical_axes(tiny), mesh))
    tokens = jnp.arange(10)[None]
    np.testing.assert_allclose(llama.forward(placed, tokens, tiny).logits, llama.forward(params, tokens, tiny).logits,
                               atol=1e-6)


@pytest.mark.parametrize("batch,length", [(4, 256), (3, 128), (1, 96)])
def test_blocked_causal_attention_equals_one_contraction(batch, length):
    """The CPU path (2-row chunks, causal query blocks that skip later keys) against a single contraction
    over every key, with left padding and two packed segments; values and gradients."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((batch, length, h, 16)), jnp.float32) for h in (6, 2, 2))
    seg = np.ones((batch, length), np.int32)
    seg[:, length // 3:] = 2  # a second packed sequence
    seg[0, :7] = 0  # padding
    mask = llama.causal_mask(jnp.asarray(seg))

    real = jnp.asarray(seg > 0)[:, :, None, None]  # a padding query attends to nothing: its output is free

    def plain(q, k, v):
        return jnp.where(real, attention.attention_kv_major(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask), 0)

    def blocked(q, k, v):
        return jnp.where(real, attention.self_attention(q, k, v, mask, "cpu"), 0)

    np.testing.assert_allclose(blocked(q, k, v), plain(q, k, v), atol=1e-5)
    g_plain = jax.grad(lambda *a: jnp.sum(plain(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
    g_blocked = jax.grad(lambda *a: jnp.sum(blocked(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_blocked, g_plain):
        np.testing.assert_allclose(a, b, atol=1e-4)
