"""genrm-jax: generative reward models (LLM judges) and Bradley-Terry baselines in JAX."""
from genrm_jax import runtime as _runtime

_runtime.apply()
