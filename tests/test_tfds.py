"""ArrayRecord tfds builders (no TensorFlow) for the preference sets, read through tfds.data_source and grain."""
import gzip
import json
import os

import pytest
from chartok import CharTokenizer

from genrm_jax.data import sources
from genrm_jax.data import tfds_builders as tb
from genrm_jax.data.pipeline import Pipeline


def _write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_rewardbench_bundled_round_trips_every_record(tmp_path):
    ds = tb.data_source("reward_bench", "filtered", data_dir=str(tmp_path))
    expected = {r["source"]: r for r in sources.load("rewardbench", sources.REWARDBENCH)}
    assert len(ds) == len(expected) == 2985
    for i in (0, 1, 1000, len(ds) - 1):
        rec = tb.to_record(ds[i])
        assert rec == expected[rec["source"]]
    assert os.path.isdir(tmp_path / "reward_bench" / "1.0.0")
    assert any(f.endswith(".array_record-00000-of-00001") for f in os.listdir(tmp_path / "reward_bench" / "1.0.0"))


def test_hh_rlhf_splits_from_a_manual_dir_feed_the_grain_pipeline(tmp_path):
    manual = tmp_path / "manual"
    for split in ("helpful-base", "harmless-base"):
        with gzip.open(sources.hh_rlhf_path(split), "rt") as f:
            rows = [json.loads(next(f)) for _ in range(12)]
        _write_jsonl(str(manual / split / "test.jsonl"), rows)
    assert set(tb.split_files(str(manual))) == {"helpful_base_test", "harmless_base_test"}
    src = tb.grain_source("hh_rlhf", "helpful_base_test", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
    expected = sources.load("hh-rlhf", str(manual / "helpful-base" / "test.jsonl"))
    assert sorted(r["source"] for r in src) == sorted(r["source"] for r in expected)
    assert all(r["subset"] == "helpful-base" and r["prompt"][-1]["role"] == "user" for r in src)
    pipe = Pipeline(src, "bt", CharTokenizer(), max_len=256, buckets=(256,), batch_size=4, progress=False)
    batch = next(pipe.iterator())
    assert batch["tokens"].shape == (4, 2, 256)
    assert pipe.stats.records == len(expected)


def test_ultrafeedback_and_ultrainteract_public_formats(tmp_path):
    uf = [{"prompt": f"q{i}", "prompt_id": f"p{i}", "score_chosen": 8.0, "score_rejected": 3.0,
           "chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"good {i}"}],
           "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"bad {i}"}]}
          for i in range(3)]
    _write_jsonl(str(tmp_path / "uf" / "train_prefs.jsonl"), uf)
    ds = tb.data_source("ultrafeedback_binarized", "train_prefs", data_dir=str(tmp_path / "tfds"),
                        manual_dir=str(tmp_path / "uf"))
    recs = sorted((tb.to_record(ds[i]) for i in range(len(ds))), key=lambda r: r["id"])
    assert [(r["id"], r["chosen"], r["rejected"]) for r in recs] == [(f"p{i}", f"good {i}", f"bad {i}")
                                                                    for i in range(3)]
    ui = [{"id": f"u{i}", "task": "Coding", "dataset": "codecontest",
           "trajectory": [{"from": "user", "value": f"solve {i}"}], "chosen": "right", "rejected": "wrong"}
          for i in range(2)]
    _write_jsonl(str(tmp_path / "ui" / "pairs.jsonl"), ui)
    ds = tb.data_source("ultra_interact_pair", "pairs", data_dir=str(tmp_path / "tfds"),
                        manual_dir=str(tmp_path / "ui"))
    rec = tb.to_record(ds[0])
    assert rec["prompt"][0]["role"] == "user" and rec["subset"] == "codecontest" and rec["category"] == "Coding"


def test_bad_requests_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown preference dataset 'hh'"):
        tb.data_source("hh", "test", data_dir=str(tmp_path))
    with pytest.raises(sources.DataError, match="ultrafeedback_binarized: no data files; pass manual_dir"):
        tb.data_source("ultrafeedback_binarized", "train_prefs", data_dir=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.DataError, match="no data files"):
        tb.split_files(str(tmp_path / "empty"))
    bad = tmp_path / "badui"
    _write_jsonl(str(bad / "x.jsonl"), [{"trajectory": [{"from": "user", "value": "q"}], "chosen": "a"}])
    with pytest.raises(sources.DataError, match=r"x.jsonl:1: field 'rejected' is missing"):
        tb.data_source("ultra_interact_pair", "x", data_dir=str(tmp_path / "t2"), manual_dir=str(bad))
