"""Deterministic train / held-out splits, stratified samples and balanced A/B order for preference records.

Everything keys on a hash of (seed, record id), so a record's fate does not depend on file order or on which
other records were loaded: adding rows to a dataset never moves an existing row between train and held-out.
"""
from __future__ import annotations

import collections
import hashlib

import numpy as np


def unit_hash(seed: int, key: str) -> float:
    """A stable pseudo-random number in [0, 1) for (seed, key)."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def _key(r: dict) -> str:
    # Ids repeat across files (HH-RLHF splits, generic files without ids); the subset disambiguates.
    return f"{r.get('subset', '')}/{r['id']}"


def train_held_out(records: list[dict], held_out_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held_out): each record goes to held-out with probability `held_out_fraction`, by its id."""
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
    train, held = [], []
    for r in records:
        (held if unit_hash(seed, _key(r)) < held_out_fraction else train).append(r)
    return train, held


def a_is_chosen(records: list[dict], seed: int = 0) -> np.ndarray:
    """Bool [N]: whether the chosen answer is shown as A. Exactly balanced (half A, half B, ± 1) within every
    subset, so a judge with a position bias scores chance, not its bias, on any subset."""
    out = np.zeros(len(records), bool)
    by_subset = collections.defaultdict(list)
    for i, r in enumerate(records):
        by_subset[r.get("subset", "")].append(i)
    for subset, idx in by_subset.items():
        ranked = sorted(idx, key=lambda i: unit_hash(seed, _key(records[i])))
        start = int(unit_hash(seed, "start/" + subset) < 0.5)  # which side gets the odd one out
        for rank, i in enumerate(ranked):
            out[i] = (rank + start) % 2 == 0
    return out


def stratified_sample(records: list[dict], per_stratum: int, seed: int = 0, key: str = "subset") -> list[dict]:
    """At most `per_stratum` records of each value of `key`, chosen by hash; output keeps the input order."""
    if per_stratum < 0:
        raise ValueError(f"per_stratum must be >= 0, got {per_stratum}")
    strata = collections.defaultdict(list)
    for i, r in enumerate(records):
        strata[r[key]].append(i)
    keep = set()
    for idx in strata.values():
        keep.update(sorted(idx, key=lambda i: unit_hash(seed, _key(records[i])))[:per_stratum])
    return [r for i, r in enumerate(records) if i in keep]
