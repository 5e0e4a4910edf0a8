"""finetune.fit, the padded last batch (rows that count for nothing), the run directory and resumable JSONL."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from chartok import CharTokenizer
from conftest import tiny_config

from genrm_jax import finetune, losses, runs, train
from genrm_jax.data.pipeline import Pipeline, collate, encode_records
from genrm_jax.models import llama

CFG = tiny_config()


def _pairs(n):
    return [{"messages": [{"role": "user", "content": f"q{i} which?"}], "chosen": f"good {i}",
             "rejected": f"bad answer {i}"} for i in range(n)]


@pytest.mark.parametrize("kind", ["dpo", "sft", "bt"])
def test_padding_rows_count_for_nothing(kind):
    """A batch of 3 real examples padded to 4 gives the loss and gradients of the 3 alone."""
    records = ([{"messages": r["messages"], "target": r["chosen"]} for r in _pairs(3)] if kind == "sft" else
               [{"prompt": r["messages"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in _pairs(3)]
               if kind == "bt" else _pairs(3))
    examples, _ = encode_records(records, kind, CharTokenizer(), 64, progress=False)
    for ex in examples:
        if kind == "dpo":
            ex["ref_logps"] = np.array([-3.0, -4.0], np.float32)
    params = {"model": llama.init(jax.random.PRNGKey(0), CFG)}
    if kind == "bt":
        from genrm_jax.models import heads
        params["head"] = heads.init(jax.random.PRNGKey(1), CFG)
    fn = losses.make_loss_fn(kind, CFG)
    grad = jax.grad(lambda p, b: fn(p, b, None).value)
    exact, padded = collate(examples, 64, 0), collate(examples, 64, 0, batch_size=4)
    assert padded["valid"].tolist() == [1, 1, 1, 0] and padded["tokens"].shape[0] == 4
    a, b = fn(params, exact, None), fn(params, padded, None)
    np.testing.assert_allclose(a.value, b.value, rtol=1e-6)
    np.testing.assert_allclose(a.weight, b.weight)
    ga, gb = grad(params, exact), grad(params, padded)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), ga, gb)


def test_pipeline_keeps_every_example_and_one_shape_per_bucket():
    pipe = Pipeline([{"messages": r["messages"], "target": r["chosen"]} for r in _pairs(7)], "sft", CharTokenizer(),
                    max_len=64, buckets=(64,), batch_size=4, drop_remainder=False, progress=False)
    batches = list(pipe.iterator())
    assert len(batches) == 2 and {b["tokens"].shape for b in batches} == {(4, 64)}
    assert sum(int(b["valid"].sum()) for b in batches) == 7


def test_fit_trains_resumes_and_returns_the_final_weights(tmp_path, monkeypatch):
    from genrm_jax.io.tiny import TINY

    traces = []  # the loss function runs once per trace of the train step
    make_loss_fn = losses.make_loss_fn

    def counted(*a, **k):
        fn = make_loss_fn(*a, **k)
        return lambda *args: (traces.append(1), fn(*args))[1]

    monkeypatch.setattr(finetune, "_TRAIN_STEPS", {})  # no step kept from another test
    monkeypatch.setattr(finetune.losses, "make_loss_fn", counted)
    cfg = llama.LlamaConfig(**{**TINY, "vocab_size": 128, "max_position_embeddings": 256})
    params = llama.init(jax.random.PRNGKey(0), cfg)
    records = [{"messages": r["messages"], "target": r["chosen"]} for r in _pairs(6)]
    ft = finetune.FinetuneConfig(kind="sft", learning_rate=1e-2, batch_size=2, max_len=64, buckets=(64,),
                                 checkpoint_every=1, epochs=2)
    new, info = finetune.fit(params, records, ft, cfg, CharTokenizer(), str(tmp_path / "a"), progress=False)
    assert info["steps"] == 6 and info["examples"] == 6 and info["resumed_from"] is None
    assert not np.allclose(new["embed"], params["embed"])
    again, info2 = finetune.fit(params, records, ft, cfg, CharTokenizer(), str(tmp_path / "a"), progress=False)
    assert info2["resumed_from"] == 6  # finished: restored, not trained again
    jax.tree.map(np.testing.assert_array_equal, new, again)
    # A fit of another length (a later STaR iteration; another lr too) runs the step compiled by the first: one
    # trace in all, and each fit still follows its own schedule.
    short = dataclasses.replace(ft, epochs=1, learning_rate=3e-2)
    _, info3 = finetune.fit(new, records[:3], short, cfg, CharTokenizer(), str(tmp_path / "b"), progress=False)
    assert info3["steps"] == 2 and len(traces) == 1
    for path, f, steps in ((tmp_path / "a", ft, 6), (tmp_path / "b", short, 2)):
        lrs = [json.loads(line)["lr"] for line in open(path / "metrics.jsonl")]
        want = train.learning_rate_schedule(train.OptimConfig(learning_rate=f.learning_rate, total_steps=steps))
        np.testing.assert_allclose(lrs, [float(want(i)) for i in range(steps)], rtol=1e-6)
    with pytest.raises(ValueError, match="finetune.kind"):
        finetune.FinetuneConfig(kind="nope")
    with pytest.raises(ValueError, match=r"config.train: unknown settings \['lr'\]"):
        finetune.FinetuneConfig.from_config({"lr": 1.0})


def test_run_refuses_another_config_naming_the_keys(tmp_path):
    runs.Run(str(tmp_path), {"a": 1, "b": {"c": 2, "d": [1, 2]}}, main=True)
    runs.Run(str(tmp_path), {"a": 1, "b": {"c": 2, "d": (1, 2)}}, main=True)  # the same config resumes
    (tmp_path / "metrics.jsonl").write_text("{}\n")  # the run has produced something: its config binds
    with pytest.raises(runs.ConfigMismatchError, match=r"2 differing keys: b\.c: 2 -> 3; e: None -> 5"):
        runs.Run(str(tmp_path), {"a": 1, "b": {"c": 3, "d": [1, 2]}, "e": 5}, main=True)
    (tmp_path / "metrics.jsonl").unlink()
    run = runs.Run(str(tmp_path), {"a": 1, "b": {"c": 2, "d": [1, 2]}}, main=True)
    assert not run.done("x")
    # a run that wrote nothing but its config (it failed on a bad model path, say) does not bind the directory
    assert runs.Run(str(tmp_path), {"a": 2}, main=True).config == {"a": 2}
    run = runs.Run(str(tmp_path), {"a": 1, "b": {"c": 2, "d": [1, 2]}}, main=True)
    assert run.finish("x", {"v": float("nan"), "w": np.float32(0.5)}) == {"v": None, "w": 0.5}
    assert run.done("x") and run.result("x") == {"v": None, "w": 0.5}
    # the mesh says where a run computes, not what: it may resume on another slice
    mesh = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "mesh": {"data": -1, "fsdp": 1, "model": 1}}
    runs.Run(str(tmp_path), {**mesh, "mesh": {"data": 1, "fsdp": -1, "model": 1}}, main=True)


def test_read_resumable_drops_a_cut_last_line_and_names_a_bad_one(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_text('{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n{"id": "c", "x"')
    assert list(runs.read_resumable(str(p))) == ["a", "b"]
    assert p.read_text() == '{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n'  # the cut line is gone for good
    p.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"out\.jsonl:2: not a result line"):
        runs.read_resumable(str(p))
    with open(p, "w") as f:
        runs.append_jsonl(f, {"id": "z", "v": float("inf")})
    assert json.loads(p.read_text()) == {"id": "z", "v": None}
