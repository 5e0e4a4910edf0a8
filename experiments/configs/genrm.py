r"""GenRM (Mahan et al., Eq. 7): SFT on the verdict token alone ("A" or "B", no rationale), every training pair in
both orders; judged by P(A) vs P(B) of that token, both orders averaged.

  python -m experiments.genrm --workdir runs/genrm [--config=experiments/configs/genrm.py:PRESET] [--config.x.y=...]

Presets: smoke, default, small, paper (experiments/configs/presets.py). Nothing is sampled, so `default` trains
on more pairs than STaR's (64 pairs = 128 records)."""
from experiments.configs import presets


def get_config(arg: str | None = None):
    preset = arg or "default"
    c = presets.base(preset, "genrm")
    del c.star  # no sampling
    c.train.train_eos = False  # the loss is on the verdict token only
    if preset == "default":
        c.data.train_pairs = 64
        # The prompts are cut as the judge cuts them (judge.max_prompt_tokens, 320), and most come near that:
        # one bucket just above it (the verdict token and EOS) wastes little and compiles once.
        c.train.update(max_len=336, buckets=(336,))
    if preset == "learn":
        # The verdict sits at ln 2 before it starts to read the answers (docs/learning.md): ~60 steps at the preset's
        # 1e-4 (it needed 288 steps, 6 epochs, ~60 minutes here), ~50 at 3e-4, where 2 epochs (96 steps) take the
        # run under 20 minutes.
        c.train.update(epochs=2, learning_rate=3e-4)
    if preset == "paper":
        c.judge.max_prompt_tokens = c.train.max_len - 2  # the judge's prompts fit the training sequences whole
    return c
