"""GenRM: SFT on the verdict token alone, every training pair in both orders (experiments/configs/genrm.py).

    python -m experiments.genrm --workdir runs/genrm [--config=experiments/configs/genrm.py:PRESET] [--config.x.y=...]

Writes <workdir>/: config.json, train.jsonl (the SFT records), train/ (checkpoints, metrics), eval/ (eval_0: the
base model, eval_1: after training), stages/, metrics.jsonl, report.json, report.md, accuracy.png and export/
(the judge as a Hugging Face directory). Killed, the same command resumes where it stopped.
"""
import os

from genrm_jax import cli, experiment

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "genrm.py")


def main(argv):
    del argv
    experiment.run(cli.config(), cli.workdir())


if __name__ == "__main__":
    cli.run(main, CONFIG_FILE)
