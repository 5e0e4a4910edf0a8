r"""Bradley-Terry reward model: a fresh scalar head on the last hidden state, trained with the model on
-log sigmoid(r(x, chosen) - r(x, rejected)); judged by sigmoid of the reward difference.

  python -m experiments.bt_rm --workdir runs/bt_rm [--config=experiments/configs/bt_rm.py:PRESET] [--config.x.y=...]

Presets: smoke, default, small, paper (experiments/configs/presets.py). Nothing is sampled, so `default` trains
on more pairs than STaR's. The answers are cut to `judge.max_answer_tokens`, as the judge cuts them."""
from experiments.configs import presets


def get_config(arg: str | None = None):
    preset = arg or "default"
    c = presets.base(preset, "bt_rm")
    del c.star  # no sampling
    if preset == "default":
        c.data.train_pairs = 64
        c.train.buckets = (128, 256, 448)  # a conversation and one answer: mostly short sequences
    return c
