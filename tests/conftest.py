import os

import pytest

# Tests never touch the user's cache: the embedded model is converted once per test session into a tmp home
# unless GENRM_JAX_TEST_HOME points at a persistent one (make test sets it to reuse the conversion).
os.environ.setdefault("GENRM_JAX_HOME", os.environ.get("GENRM_JAX_TEST_HOME", "/tmp/genrm_jax_test_home"))
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
# The two pytest workers already fill the two cores: torch's OpenMP threads (the Hugging Face parity tests)
# spin-wait when they outnumber the free cores, which made those tests 2x slower beside the other worker.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Compiled executables are cached across the test session's processes (experiments run as subprocesses on the
# tiny model compile the same train steps and kernels again and again).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ["GENRM_JAX_HOME"], "jax-compilation-cache"))
# Every computation, however quick to compile: the tiny model's hundreds of sub-second compilations are most of
# what a rerun of the in-process tests would otherwise spend (JAX caches only those over 1 s by default).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from genrm_jax import runtime  # noqa: E402
from genrm_jax.models import llama  # noqa: E402

runtime.apply()  # the test process runs like an entry point (importing genrm_jax alone changes nothing)


def tiny_config(**kw) -> llama.LlamaConfig:
    """A random-weight Llama small enough for a 2-core CPU: GQA 4/2 heads, 2 layers."""
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=16, rope_theta=10000.0, max_position_embeddings=256, bos_token_id=1, eos_token_ids=(2,),
                pad_token_id=0)
    base.update(kw)
    return llama.LlamaConfig(**base)


@pytest.fixture
def tiny():
    return tiny_config()


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct, loaded once per session (fp32)."""
    from genrm_jax.io import load_model

    return load_model("smollm2-135m-instruct")
