"""CoT-GenRM: SFT on rationale + verdict, the rationales read from data.rationales_path or, by default, sampled
from the model with the label as a hint (one Rationalizer round; experiments/configs/cot_genrm.py).

    python -m experiments.cot_genrm --workdir runs/cot_genrm [--config=experiments/configs/cot_genrm.py:PRESET] [--config.x.y=...]

Writes <workdir>/: config.json, samples/rationales.jsonl (sampled rationales, when no file is given),
train.jsonl (the SFT records), train/ (checkpoints, metrics), eval/ (eval_0: the base model, eval_1: after
training), stages/, metrics.jsonl, report.json, report.md, accuracy.png and export/ (the judge as a Hugging Face
directory). Killed, the same command resumes where it stopped.
"""
import os

from genrm_jax import cli, experiment

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "cot_genrm.py")


def main(argv):
    del argv
    experiment.run(cli.config(), cli.workdir())


if __name__ == "__main__":
    cli.run(main, CONFIG_FILE)
