"""Adapters that let RL trainers use a judge served by `python -m genrm_jax.serve` as their reward."""
