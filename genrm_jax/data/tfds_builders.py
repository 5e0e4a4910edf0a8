"""tensorflow-datasets builders for the preference sets, stored as ArrayRecord and read without TensorFlow.

Each builder reads local files in the dataset's public format through `sources.load` (so validation and the
HH-RLHF prefix split live in one place) and writes one example per preference pair. Only
`file_format="array_record"` works without TensorFlow; reading goes through `tfds.data_source`, a random-access
source that grain wraps directly (`grain_source`).

Files come from the builder's manual directory (defaults: the bundled copies for HH-RLHF and RewardBench).
Every `.jsonl`, `.jsonl.gz`, `.json` or `.parquet` file under it becomes a split named after its relative path
without the extension, with `/` and `-` turned into `_`: `helpful-base/test.jsonl.gz` -> `helpful_base_test`,
`filtered.jsonl.gz` -> `filtered`, `train_prefs.parquet` -> `train_prefs`.

The builder classes live in this importable module (not `__main__`) because grain worker processes unpickle
them; those processes also need absl flags parsed first (`absl.app.run` or `flags.FLAGS(sys.argv)`).
"""
from __future__ import annotations

import inspect
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from genrm_jax.data import sources

_EXTENSIONS = (".jsonl.gz", ".jsonl", ".json", ".parquet")


def split_files(manual_dir: str) -> dict[str, str]:
    """{split name: path} for every data file under manual_dir."""
    if not os.path.isdir(manual_dir):
        raise sources.DataError(f"{manual_dir}: no such directory (the builder's manual_dir holds the data files)")
    out = {}
    for root, _, names in os.walk(manual_dir):
        for name in sorted(names):
            ext = next((e for e in _EXTENSIONS if name.endswith(e)), None)
            if ext is None:
                continue
            rel = os.path.relpath(os.path.join(root, name), manual_dir)[: -len(ext)]
            out[re.sub(r"[/\\\-. ]", "_", rel)] = os.path.join(root, name)
    if not out:
        raise sources.DataError(f"{manual_dir}: no data files (expected {', '.join(_EXTENSIONS)})")
    return dict(sorted(out.items()))


class _PreferencePairs(tfds.core.GeneratorBasedBuilder):
    """Pairs in the `sources` record shape; the conversation is kept as role/content sequences."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Preference pairs from local files, read through genrm_jax.data.sources."}
    FORMAT: str = ""  # sources.load format
    DEFAULT_MANUAL_DIR: str | None = None
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the dataset's files (jsonl, jsonl.gz, json or parquet) in the manual dir."

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # tfds 4.9.10's own code_path reaches for the `importlib_resources` backport, which it only installs on
        # Python < 3.9, for any builder defined inside a package; the file of the class is all it needs.
        from etils import epath

        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        # tfrecord (tfds' default) needs TensorFlow to write and read.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": text, "roles": tfds.features.Sequence(text), "contents": tfds.features.Sequence(text),
                "chosen": text, "rejected": text, "subset": text, "category": text, "source": text,
            }),
            description=f"Preference pairs ({self.FORMAT} format) from local files.",
        )

    def _manual_dir(self, dl_manager) -> str:
        # Without a manual_dir in the DownloadConfig, tfds expects <data_dir>/downloads/manual and asserts that it
        # has files; the bundled copy stands in for it where there is one.
        try:
            return os.fspath(dl_manager.manual_dir)
        except AssertionError:
            if self.DEFAULT_MANUAL_DIR:
                return self.DEFAULT_MANUAL_DIR
            raise sources.DataError(f"{self.name}: no data files; pass manual_dir= (a folder with the "
                                    f"{self.FORMAT} files)") from None

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(path) for name, path in split_files(self._manual_dir(dl_manager)).items()}

    def _generate_examples(self, path):
        for rec in sources.load(self.FORMAT, path):
            yield rec["source"], {
                "id": rec["id"], "roles": [t["role"] for t in rec["prompt"]],
                "contents": [t["content"] for t in rec["prompt"]], "chosen": rec["chosen"],
                "rejected": rec["rejected"], "subset": rec["subset"], "category": rec["category"],
                "source": rec["source"],
            }


class HhRlhf(_PreferencePairs):
    """Anthropic HH-RLHF: `<split>/*.jsonl.gz` transcript pairs (bundled: the four test splits)."""
    FORMAT = "hh-rlhf"
    DEFAULT_MANUAL_DIR = os.path.join(sources.FILES_DIR, "hh-rlhf")


class RewardBench(_PreferencePairs):
    """RewardBench v1 rows (bundled: the `filtered` split)."""
    FORMAT = "rewardbench"
    DEFAULT_MANUAL_DIR = os.path.join(sources.FILES_DIR, "rewardbench")


class UltrafeedbackBinarized(_PreferencePairs):
    """HuggingFaceH4/ultrafeedback_binarized files (`train_prefs`, `test_prefs`, ...)."""
    FORMAT = "ultrafeedback"


class UltraInteractPair(_PreferencePairs):
    """openbmb/UltraInteract_pair files."""
    FORMAT = "ultrainteract"


BUILDERS = {"hh_rlhf": HhRlhf, "reward_bench": RewardBench, "ultrafeedback_binarized": UltrafeedbackBinarized,
            "ultra_interact_pair": UltraInteractPair}


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def to_record(example: dict) -> dict:
    """A decoded tfds example (text comes back as bytes) -> the `sources` record dict."""
    roles, contents = example["roles"], example["contents"]
    return {
        "id": _text(example["id"]),
        "prompt": [{"role": _text(r), "content": _text(c)} for r, c in zip(np.asarray(roles).tolist(),
                                                                             np.asarray(contents).tolist())],
        **{k: _text(example[k]) for k in ("chosen", "rejected", "subset", "category", "source")},
    }


def data_source(name: str, split: str, *, data_dir: str, manual_dir: str | None = None):
    """Prepares (once) and opens one split as a random-access tfds data source."""
    if name not in BUILDERS:
        raise ValueError(f"unknown preference dataset {name!r}; expected one of {sorted(BUILDERS)}")
    builder = BUILDERS[name](data_dir=data_dir)
    dl_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=dl_config)
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            builder_kwargs={"file_format": "array_record"})


def grain_source(name: str, split: str, *, data_dir: str, manual_dir: str | None = None):
    """A grain MapDataset of `sources`-shaped records, ready for `pipeline.Pipeline`."""
    import grain

    return grain.MapDataset.source(data_source(name, split, data_dir=data_dir, manual_dir=manual_dir)).map(to_record)
