r"""PairRM: a fresh scalar head reading both answers in one sequence ("[Answer A] ... [Answer B] ..."), trained
on both orders (labels 1, 0); judged by the head's logit averaged over both orders.

  python -m experiments.pairrm --workdir runs/pairrm [--config=experiments/configs/pairrm.py:PRESET] [--config.x.y=...]

Presets: smoke, default, small, paper (experiments/configs/presets.py). Nothing is sampled, so `default` trains
on more pairs than STaR's. The answers are cut to `judge.max_answer_tokens`, as the judge cuts them."""
from experiments.configs import presets


def get_config(arg: str | None = None):
    preset = arg or "default"
    c = presets.base(preset, "pairrm")
    del c.star  # no sampling
    if preset == "default":
        c.data.train_pairs = 48  # two sequences per pair, each holding both answers
        c.train.buckets = (224, 448)
    return c
