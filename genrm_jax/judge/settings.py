"""The judging settings that travel with an exported judge: `<export>/judge_settings.json`.

A judge trained with forced verdicts, a prompt, and answers cut to N tokens should be judged the same way after
export. `write(export_dir, config)` records the fields of `FIELDS` from the `api.JudgeConfig` the judge was
trained and evaluated with; `overrides(model_dir)` reads them back as JudgeConfig keyword arguments ({} for a
model without the file: a registered name, a GGUF file, a plain Hugging Face directory); `apply(config,
model_dir, explicit=...)` is the JudgeConfig to judge with: the file's values, except for the fields the caller
was told explicitly (a flag, a config override), which win.

The file (strict JSON, one object):

    {"version": 1, "method": "cot", "prompt": "judge", "verdict": "force", "max_new_tokens": 128,
     "max_answer_tokens": 128, "max_prompt_tokens": null}

A malformed file, an unknown field or a value JudgeConfig rejects raises `SettingsError` naming the file and
the field.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable

from genrm_jax import runs
from genrm_jax.judge import api

FILENAME = "judge_settings.json"
VERSION = 1
# What a trained judge depends on: how its prompt is built and cut, how long its rationale is, how its verdict is
# read. Sampling (k, temperature, seed) and position are choices of each evaluation, not of the judge.
FIELDS = ("method", "prompt", "verdict", "max_new_tokens", "max_answer_tokens", "max_prompt_tokens")


class SettingsError(ValueError):
    """A bad judge_settings.json; the message names the file and the field."""


def path(model_dir: str) -> str:
    return os.path.join(model_dir, FILENAME)


def of(config: api.JudgeConfig) -> dict:
    """The travelling fields of a JudgeConfig, with the file's version."""
    return {"version": VERSION, **{f: getattr(config, f) for f in FIELDS}}


def write(export_dir: str, config: api.JudgeConfig) -> str:
    """Writes `<export_dir>/judge_settings.json` (atomically) and returns its path."""
    out = path(export_dir)
    runs.write_json_atomic(out, of(config))
    return out


def read(model_dir: str) -> dict | None:
    """The settings of a model directory as JudgeConfig fields, or None when it has no settings file (or is not a
    directory). Checked: JSON object, known fields, values JudgeConfig accepts."""
    p = path(model_dir)
    if not os.path.isfile(p):
        return None
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SettingsError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{p}: expected a JSON object, got {type(data).__name__}")
    version = data.get("version")
    if version != VERSION:
        raise SettingsError(f"{p}: field 'version' must be {VERSION}, got {version!r}")
    fields = {k: v for k, v in data.items() if k != "version"}
    for key in fields:
        if key not in FIELDS:
            raise SettingsError(f"{p}: unknown field {key!r}; expected {', '.join(FIELDS)}")
    try:
        api.JudgeConfig(**fields)  # every value checked now, not at the first judgment
    except api.JudgeConfigError as e:
        raise SettingsError(f"{p}: field {e.field!r} {e.problem}") from None
    return fields


def overrides(model_dir: str) -> dict:
    """JudgeConfig keyword arguments from the model's settings file ({} when it has none)."""
    return read(model_dir) or {}


def apply(config: api.JudgeConfig, model_dir: str, explicit: Iterable[str] = ()) -> api.JudgeConfig:
    """`config` with the model's recorded settings, except the fields named in `explicit` (the caller's own
    choices win). A recorded method is kept only when `config.method` was not explicit."""
    keep = set(explicit)
    fields = {k: v for k, v in overrides(model_dir).items() if k not in keep}
    if not fields:
        return config
    try:
        return dataclasses.replace(config, **fields)
    except api.JudgeConfigError as e:
        raise SettingsError(f"{path(model_dir)}: field {e.field!r} {e.problem} (with the explicit settings "
                            f"{sorted(keep)})") from None
