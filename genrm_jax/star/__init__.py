"""The STaR loop (Mahan et al., 2024): sample judgments from the current judge, select training records from
them (pure), fine-tune, evaluate, repeat on the next part of the data. See loop.py."""
