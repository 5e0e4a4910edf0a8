"""Rationalizer: per iteration, rationales sampled with the true label given as a hint, then SFT on the un-hinted prompt (lr 2e-5); the :ipo preset variant trains IPO (beta 0.4) on hinted-correct vs. the judge's own incorrect judgments. See experiments/configs/rationalizer.py for the presets.

    python -m experiments.rationalizer --workdir runs/rationalizer [--config=experiments/configs/rationalizer.py:PRESET] [--config.x.y=...]

Writes <workdir>/: config.json, samples/iter_<t>.jsonl, train/iter_<t>.jsonl and train/iter_<t>/ (checkpoints,
metrics), eval/, metrics.jsonl, report.json, report.md, accuracy.png and export/ (the judge as a Hugging Face
directory). Killed, the same command resumes where it stopped.
"""
import os

from genrm_jax import cli, experiment

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "rationalizer.py")


def main(argv):
    del argv
    experiment.run(cli.config(), cli.workdir())


if __name__ == "__main__":
    cli.run(main, CONFIG_FILE)
