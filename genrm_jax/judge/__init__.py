"""Judging preference pairs: prompts (`prompts`), verdict parsing (`verdicts`), the callable judge and RL reward
(`api.Judge`)."""
