"""Deterministic train / held-out splits, stratified samples and balanced A/B order for preference records, and
an experiment's data (`experiment_data`: training pairs and evaluation sets from the config group `data`).

Everything keys on a hash of (seed, record id), so a record's fate does not depend on file order or on which
other records were loaded: adding rows to a dataset never moves an existing row between train and held-out.
"""
from __future__ import annotations

import collections
import hashlib
import os

import numpy as np

from genrm_jax.config_util import ConfigValueError as ConfigError
from genrm_jax.data import sources, verifiable

IN_DISTRIBUTION = "hh-rlhf-held-out"  # the evaluation sets' names in every report
OUT_OF_DISTRIBUTION = "rewardbench"


def own_sets(names) -> list[str]:
    """The evaluation sets among `names` other than HH-RLHF held out and RewardBench (the `learn` preset's verifiable
    sets), in order: runs that have them trained on them, so HH-RLHF held out is not their in-distribution set."""
    return [n for n in dict.fromkeys(names) if n not in (IN_DISTRIBUTION, OUT_OF_DISTRIBUTION)]


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


def take(records: list[dict], n: int | None, seed: int) -> list[dict]:
    """At most n records chosen by a seeded hash of their ids (input order kept); None or 0 = all."""
    if not n or n >= len(records):
        return list(records)
    keep = set(sorted(range(len(records)), key=lambda i: unit_hash(seed, _key(records[i])))[:n])
    return [r for i, r in enumerate(records) if i in keep]


def parts(records: list[dict], n: int, seed: int = 0) -> list[list[dict]]:
    """`records` split into n disjoint parts of near-equal size by a seeded hash of the ids (STaR's iterations)."""
    if n < 1:
        raise ValueError(f"parts: n must be >= 1, got {n}")
    order = sorted(range(len(records)), key=lambda i: unit_hash(seed + 7919, _key(records[i])))
    return [[records[i] for i in sorted(order[k::n])] for k in range(n)]


def load(fmt: str, path: str, skipped: list | None = None) -> list[dict]:
    """sources.read's records; skipped rows are logged and, given a `skipped` list, appended to it."""
    return sources.load(fmt, path, skipped=skipped)


def skip_counts(skipped: list) -> dict[str, int]:
    """{reason: rows} of the rows the data files could not give as pairs (for the report)."""
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    return counts


def experiment_data(d, seed: int = 0, skipped: list | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """(training pairs, {eval set: pairs}) from the config group `d`:

    - `train` "hh-rlhf" (the bundled HH-RLHF files, split by record id into train / held-out with
      `held_out_fraction`) or a file `train_path` in `train_format` (then `held_out_fraction` of it is held out);
    - `train_pairs`: at most this many training pairs (seeded; 0 = all);
    - `held_out_per_subset`: in-distribution evaluation pairs per subset (HH-RLHF split), from the held-out part
      only, never trained on;
    - `rewardbench_per_subset`: out-of-distribution RewardBench pairs per subset (0 = no RewardBench set).
    Bad values raise ConfigError naming the field; bad files sources.DataError naming file and line.
    Rows that cannot be pairs (empty or identical answers, ...) are skipped, logged with their lines and, given
    a `skipped` list, appended to it (sources.Skipped) so the report can count them.
    """
    frac = float(d.held_out_fraction)
    if not 0.0 < frac < 1.0:
        raise ConfigError(f"config.data.held_out_fraction: must be in (0, 1), got {d.held_out_fraction!r}")
    if d.train == "verifiable":  # generated pairs a program checks (data/verifiable.py): in-distribution + shifted
        v = d.verifiable
        train, sets = verifiable.datasets(v.families, train_per_family=v.train_per_family,
                                          eval_per_family=v.eval_per_family, shifted_per_family=v.shifted_per_family,
                                          seed=seed)
        if d.held_out_per_subset:
            hh = [r for s in sources.HH_RLHF_SPLITS for r in load("hh-rlhf", sources.hh_rlhf_path(s), skipped)]
            sets[IN_DISTRIBUTION] = stratified_sample(train_held_out(hh, frac, seed=seed)[1], d.held_out_per_subset,
                                                      seed=seed)
        if d.rewardbench_per_subset:
            sets[OUT_OF_DISTRIBUTION] = stratified_sample(load("rewardbench", sources.REWARDBENCH, skipped),
                                                          d.rewardbench_per_subset, seed=seed)
        return take(train, d.train_pairs, seed), sets
    if d.train == "hh-rlhf":
        pool = [r for s in sources.HH_RLHF_SPLITS for r in load("hh-rlhf", sources.hh_rlhf_path(s), skipped)]
    elif d.train == "file":
        if not d.train_path or not os.path.exists(d.train_path):
            raise ConfigError(f"config.data.train_path: no such file: {d.train_path!r}")
        pool = load(d.train_format, d.train_path, skipped)
    else:
        raise ConfigError(f"config.data.train: must be 'hh-rlhf', 'file' or 'verifiable', got {d.train!r}")
    train, held = train_held_out(pool, frac, seed=seed)
    train = take(train, d.train_pairs, seed)
    if not train:
        raise ConfigError("config.data: no training pairs left after the held-out split")
    sets = {IN_DISTRIBUTION: stratified_sample(held, d.held_out_per_subset, seed=seed)
            if d.held_out_per_subset else held}
    if d.rewardbench_per_subset:
        rb = load("rewardbench", sources.REWARDBENCH, skipped)
        sets[OUT_OF_DISTRIBUTION] = stratified_sample(rb, d.rewardbench_per_subset, seed=seed)
    return train, sets
