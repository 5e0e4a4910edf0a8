r"""STaR-SFT: per iteration, SFT on the judgments sampled from the current judge whose verdict is correct.

  python -m experiments.star_sft --workdir runs/star_sft [--config=experiments/configs/star_sft.py:PRESET] [--config.x.y=...]

Presets: smoke, default, small, paper (experiments/configs/presets.py)."""
from experiments.configs import presets


def get_config(arg: str | None = None):
    preset = arg or "default"
    c = presets.base(preset, "star_sft")
    return c
