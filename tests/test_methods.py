"""The method registry (genrm_jax/methods.py): every entry is consistent with the losses, the judges, the parts
that run it and the configs that name it."""
from __future__ import annotations

import importlib
import os

import pytest

from genrm_jax import experiment, losses, methods
from genrm_jax.judge import api, benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The experiments: an entry point experiments/<m>.py with its config experiments/configs/<m>.py (the ablation runs
# the others; presets.py and other shared preset modules have no entry point).
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "experiments", "configs"))
                 if f.endswith(".py") and f not in ("__init__.py", "ablation.py")
                 and os.path.exists(os.path.join(REPO, "experiments", f)))


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_an_entry_is_consistent(name):
    m = methods.METHODS[name]
    if m.part == "zero_shot":
        assert m.loss is None and not m.records
        return
    spec = losses.spec(m.loss)
    assert spec.head == m.head == methods.JUDGES[m.judge]
    assert m.part in experiment.PARTS
    assert callable(methods.records(m))  # its part registered the builder when imported
    assert m.held_copies >= 1


@pytest.mark.parametrize("module", CONFIGS)
def test_every_config_names_its_method(module):
    config = importlib.import_module(f"experiments.configs.{module}")
    c = config.get_config("smoke")
    m = methods.of_config(c)
    assert m.name == module or (module == "rationalizer" and m.name.startswith("rationalizer"))


def test_the_judge_tables_are_the_registry():
    assert api.METHODS == tuple(methods.JUDGES)
    assert benchmark.ZERO_SHOT_METHODS == ("cot", "genrm") and benchmark.HEAD_METHODS == ("bt", "pairrm")


def test_an_unknown_or_missing_method_is_named():
    with pytest.raises(ValueError, match="config.method: unknown method 'bt'; expected one of"):
        methods.get("bt")
    with pytest.raises(ValueError, match="config.method: missing"):
        methods.of_config({})
    with pytest.raises(ValueError, match="registered twice"):
        methods.register(methods.METHODS["genrm"])
    with pytest.raises(ValueError, match="judge 'bt' and head=False disagree"):
        methods.Method("x", "baseline", "sft", judge="bt")


def _trains(module) -> bool:
    c = importlib.import_module(f"experiments.configs.{module}").get_config("smoke")
    return methods.of_config(c).part in experiment.PARTS  # the zero-shot judge (llm_judge) trains nothing


@pytest.mark.parametrize("module", [m for m in CONFIGS if _trains(m)])
def test_the_learn_preset_passes_every_check_before_the_model_loads(module):
    """The `learn` preset of every training experiment (the ablation runs them all): config, data, the part's own
    group, room for a sampled judgment in train.max_len, the memory plan. Self-Rationalization's failed here
    (rubric prompts longer than the preset's 320 tokens) and the ablation reported it only when its turn came."""
    c = importlib.import_module(f"experiments.configs.{module}").get_config("learn")
    m = methods.of_config(c)
    setup = experiment.prepare(c, m, experiment.PARTS[m.part])
    verifiable = {len(v) for k, v in setup.eval_sets.items() if k.startswith("verifiable")}
    # 192 training pairs (Self-Rationalization: 96, its four evaluations of rubric prompts take most of its run)
    assert len(setup.train) == (96 if module == "self_rationalization" else 192) and verifiable == {200}
