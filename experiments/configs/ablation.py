r"""The ablation: every method on one preset, then one table (python -m experiments.ablation).

  python -m experiments.ablation --workdir runs/ablation [--config=experiments/configs/ablation.py:PRESET]
      [--config.x=...]

Fields:
  preset        the preset every sub-run uses: smoke, default, small, paper, learn (experiments/configs/presets.py)
  methods       comma list of experiments (experiments/<m>.py with experiments/configs/<m>.py), run in this order
  overrides     extra `--config.x=y` flags passed to every sub-run, e.g. for paper
                "--config.model=/data/Llama-3.1-8B-Instruct --config.data.train_path=/data/ultrafeedback.jsonl"
  collect_only  run nothing: build the table from the run directories already there
"""
import ml_collections

from experiments.configs import presets

METHODS = "genrm,bt_rm,pairrm,star_sft,star_dpo,rationalizer,self_rationalization"


def get_config(arg: str | None = None):
    preset = arg or "default"
    if preset not in presets.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(presets.PRESETS)}")
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.methods = METHODS
    c.overrides = ""
    c.collect_only = False
    return c
