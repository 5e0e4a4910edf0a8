r"""STaR-DPO: per iteration, DPO (beta 1.0) on pairs of a correct and an incorrect judgment sampled from the current judge for the same prompt.

  python -m experiments.star_dpo --workdir runs/star_dpo [--config=experiments/configs/star_dpo.py:PRESET] [--config.x.y=...]

Presets: smoke, default, small, paper (experiments/configs/presets.py)."""
from experiments.configs import presets


def get_config(arg: str | None = None):
    preset = arg or "default"
    c = presets.base(preset, "star_dpo")
    c.train.beta = 1.0
    return c
