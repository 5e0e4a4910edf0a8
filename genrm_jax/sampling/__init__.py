"""Sampling from a Llama over a preallocated KV cache: one prefill, then a compiled decode loop.

- `tokens.py`: the request (`SamplingParams`) and the token maths (greedy, temperature, top-k, top-p; no sort);
- `kernels.py`: the jitted prefill, decode and score kernels, the KV cache and its layouts;
- `continuation.py`: scoring tokens appended to finished rows from their KV cache (forced verdicts);
- `engine.py`: `Engine`, which batches prompts into shape buckets around those kernels (`set_params` swaps in
  new weights without recompiling; `mesh=` shards it).
"""
from genrm_jax.sampling.engine import Completion, Continuation, Engine, batch_bucket, length_bucket, prefix_bucket
from genrm_jax.sampling.tokens import Mode, SamplingParams, sample_tokens

__all__ = ["Completion", "Continuation", "Engine", "Mode", "SamplingParams", "batch_bucket", "length_bucket",
           "prefix_bucket", "sample_tokens"]
