"""genrm-jax: generative reward models (LLM judges) and Bradley-Terry baselines in JAX.

Importing the package changes nothing process-wide: the allocator and dispatch settings that XLA:CPU needs to
run at speed (`genrm_jax.runtime.apply`) are applied by the entry points (`cli.run`, the benchmarks), so that a
program embedding genrm-jax keeps its own.
"""
