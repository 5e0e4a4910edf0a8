"""PairRM: a fresh scalar head on one sequence holding both answers, trained on both orders
(experiments/configs/pairrm.py).

    python -m experiments.pairrm --workdir runs/pairrm [--config=experiments/configs/pairrm.py:PRESET] [--config.x.y=...]

Writes <workdir>/: config.json, train.jsonl (the training pairs), train/ (checkpoints, metrics), eval/
(eval_1: after training; the untrained head is not evaluated), stages/, metrics.jsonl, report.json, report.md,
accuracy.png and export/ (a Hugging Face directory with reward_head.npz beside the weights). Killed, the same
command resumes where it stopped.
"""
import os

from genrm_jax import cli, experiment

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "pairrm.py")


def main(argv):
    del argv
    experiment.run(cli.config(), cli.workdir())


if __name__ == "__main__":
    cli.run(main, CONFIG_FILE)
