"""STaR-DPO: per iteration, DPO (beta 1.0) on pairs of a correct and an incorrect judgment sampled from the current judge for the same prompt. See experiments/configs/star_dpo.py for the presets.

    python -m experiments.star_dpo --workdir runs/star_dpo [--config=experiments/configs/star_dpo.py:PRESET] [--config.x.y=...]

Writes <workdir>/: config.json, samples/iter_<t>.jsonl, train/iter_<t>.jsonl and train/iter_<t>/ (checkpoints,
metrics), eval/, metrics.jsonl, report.json, report.md, accuracy.png and export/ (the judge as a Hugging Face
directory). Killed, the same command resumes where it stopped.
"""
import os

from genrm_jax import cli, experiment

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "star_dpo.py")


def main(argv):
    del argv
    experiment.run(cli.config(), cli.workdir())


if __name__ == "__main__":
    cli.run(main, CONFIG_FILE)
