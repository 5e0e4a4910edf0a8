"""STaR-SFT: per iteration, SFT on the judgments sampled from the current judge whose verdict is correct. See experiments/configs/star_sft.py for the presets.

    python -m experiments.star_sft --workdir runs/star_sft [--config=experiments/configs/star_sft.py:PRESET] [--config.x.y=...]

Writes <workdir>/: config.json, samples/iter_<t>.jsonl, train/iter_<t>.jsonl and train/iter_<t>/ (checkpoints,
metrics), eval/, metrics.jsonl, report.json, report.md, accuracy.png and export/ (the judge as a Hugging Face
directory). Killed, the same command resumes where it stopped.
"""
import os

from genrm_jax import cli, experiment

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "star_sft.py")


def main(argv):
    del argv
    experiment.run(cli.config(), cli.workdir())


if __name__ == "__main__":
    cli.run(main, CONFIG_FILE)
