"""Self-Rationalization: J_SFT (a pointwise and a pairwise SFT judge, merged), then iterative DPO on preference
pairs the judge builds from its own judgments; self-consistency and best-of-N baselines. See
experiments/configs/self_rationalization.py for the presets.

    python -m experiments.self_rationalization --workdir runs/sre [--config=experiments/configs/self_rationalization.py:PRESET] [--config.x.y=...]

Writes <workdir>/: config.json, samples/ (seed_<task>.jsonl, iter_<t>_<task>.jsonl), train/ (records and
checkpoints of seed_pointwise, seed_pairwise, iter_<t>, best_of_n), eval/, metrics.jsonl, report.json,
report.md, accuracy.png (score_errors.png with a gold-scored set) and export/ (the final judge as a Hugging Face
directory). Killed, the same command resumes where it stopped.
"""
import os

from genrm_jax import cli, experiment

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "self_rationalization.py")


def main(argv):
    del argv
    experiment.run(cli.config(), cli.workdir())


if __name__ == "__main__":
    cli.run(main, CONFIG_FILE)
