r"""Rationalizer: per iteration, rationales sampled with the true label given as a hint, then SFT on the un-hinted prompt (lr 2e-5); the :ipo preset variant trains IPO (beta 0.4) on hinted-correct vs. the judge's own incorrect judgments.

  python -m experiments.rationalizer --workdir runs/rationalizer [--config=experiments/configs/rationalizer.py:PRESET] [--config.x.y=...]

Presets: smoke, default, small, paper (experiments/configs/presets.py), and ipo / smoke_ipo / small_ipo (the IPO variant)."""
from experiments.configs import presets


def get_config(arg: str | None = None):
    preset = arg or "default"
    ipo = preset == "ipo" or preset.endswith("_ipo")
    base = preset[:-len("_ipo")] if preset.endswith("_ipo") else ("default" if preset == "ipo" else preset)
    c = presets.base(base, "rationalizer_ipo" if ipo else "rationalizer")
    c.preset = preset
    if ipo:
        c.train.beta = 0.4
    elif base != "smoke":
        c.train.learning_rate = 2e-5  # the paper's rationalizer SFT rate
    return c
