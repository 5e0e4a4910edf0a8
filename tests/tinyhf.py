"""The tiny random-weight model as a Hugging Face directory (genrm_jax.io.tiny), with the tests' defaults."""
from genrm_jax.io.tiny import make_model_dir as _make


def make_model_dir(out_dir: str, seed: int = 0, **config_kw) -> str:
    return _make(out_dir, seed, **{"max_position_embeddings": 2048, **config_kw})
