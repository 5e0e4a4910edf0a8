"""Settings dataclasses from config groups: an unknown key is an error that names it, never silently ignored."""
from __future__ import annotations

import dataclasses


def from_config(cls, cfg, where: str, **overrides):
    """`cls(**cfg, **overrides)` for a dict or ml_collections.ConfigDict; tuples stay tuples (ConfigDicts give
    lists back); an unknown key raises ValueError naming `where` and the known fields."""
    d = {**dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg), **overrides}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown settings {unknown}; expected some of {sorted(fields)}")
    for k, v in d.items():
        if isinstance(v, list) and "tuple" in str(fields[k].type):
            d[k] = tuple(v)
    return cls(**d)
