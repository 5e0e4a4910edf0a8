"""Bradley-Terry reward model: a fresh scalar head trained with the model on the training pairs
(experiments/configs/bt_rm.py).

    python -m experiments.bt_rm --workdir runs/bt_rm [--config=experiments/configs/bt_rm.py:PRESET] [--config.x.y=...]

Writes <workdir>/: config.json, train.jsonl (the training pairs), train/ (checkpoints, metrics), eval/
(eval_1: after training; the untrained head is not evaluated), stages/, metrics.jsonl, report.json, report.md,
accuracy.png and export/ (a Hugging Face directory with reward_head.npz beside the weights). Killed, the same
command resumes where it stopped.
"""
import os

from genrm_jax import cli, experiment

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "bt_rm.py")


def main(argv):
    del argv
    experiment.run(cli.config(), cli.workdir())


if __name__ == "__main__":
    cli.run(main, CONFIG_FILE)
