"""The audit's findings (issue 24), each a test that failed on the code before its fix: configs validated before a
run directory is bound, a run directory locked against a second process, a checkpoint named "last good" only when
its state is finite, a damaged checkpoint or compressed file named by path, duplicate record ids refused, reports
written atomically, every skipped row counted, `--help` a success, and two mutations that the other tests let
through (a forced verdict drawn by a fair coin; Self-Rationalization's merge parents swapped)."""
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from chartok import CharTokenizer

from genrm_jax import config_util, evaluation, finetune, runs, train
from genrm_jax.checkpoint import Checkpointer, CheckpointError
from genrm_jax.data import sources
from genrm_jax.judge import api, benchmark
from genrm_jax.losses import Loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}


def _smoke(module="star_dpo"):
    from importlib import import_module

    return import_module(f"experiments.configs.{module}").get_config("smoke")


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("module, key, value, expected", [
    ("star_dpo", "data.train_pairs", -5, "an integer >= 0 (0 = all training pairs)"),
    ("star_dpo", "star.temperature", -1.0, "a finite temperature >= 0"),
    ("star_dpo", "star.top_p", 0.0, "0 < top_p <= 1"),
    ("star_dpo", "star.max_new_tokens", 0, "an integer >= 1"),
    ("star_dpo", "train.learning_rate", float("inf"), "a finite learning_rate > 0"),
    ("star_dpo", "train.warmup_fraction", 1.5, "0 <= warmup_fraction <= 1"),
    ("star_dpo", "train.beta", 0.0, "a finite beta > 0"),
    ("star_dpo", "judge.k", 0, "an integer >= 1"),
    ("star_dpo", "eval.ks", (1, 0), "a non-empty list of integers >= 1"),
    ("star_dpo", "mesh.fsdp", 0, "-1 (the devices left)"),
    ("self_rationalization", "sre.sft_learning_rate", float("nan"), "a finite sft_learning_rate > 0"),
    ("self_rationalization", "sre.alpha", 1.5, "0 <= alpha <= 1"),
    ("self_rationalization", "pointwise.top_p", 1.5, "0 < top_p <= 1"),
    ("llm_judge", "eval.per_subset", -1, "an integer >= 0"),
])
def test_every_range_is_checked_naming_the_key(module, key, value, expected):
    c = _smoke(module)
    config_util.validate(c)  # every preset as shipped is valid
    d = c.to_dict()
    group, field = key.split(".")
    d[group][field] = value
    with pytest.raises(config_util.ConfigValueError) as e:
        config_util.validate(d)
    assert str(e.value).startswith(f"config.{key}={value!r}: expected ") and expected in str(e.value)
    assert "\n" not in str(e.value)


def test_the_settings_dataclass_refuses_an_infinite_learning_rate_too():
    with pytest.raises(ValueError, match=r"finetune.learning_rate=inf: expected a finite learning rate > 0"):
        finetune.FinetuneConfig(learning_rate=float("inf"))


def test_the_all_value_of_a_count_is_zero():
    c = _smoke().to_dict()
    c["data"].update(train_pairs=0, held_out_per_subset=0, rewardbench_per_subset=0)
    config_util.validate(c)


def test_a_bad_sampling_setting_binds_nothing_and_the_corrected_run_opens(tmp_path):
    """Before: the model loaded, the first evaluation ran, a traceback came, and the directory was bound to the
    bad config, so the corrected command was refused. Now: one line, status 2, nothing written."""
    workdir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "experiments.star_dpo", "--config=experiments/configs/star_dpo.py:smoke",
                        "--config.star.top_p=0.0", f"--workdir={workdir}"], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == "error: config.star.top_p=0.0: expected 0 < top_p <= 1"
    assert not workdir.exists() or not any(workdir.rglob("*"))
    runs.Run(str(workdir), _smoke(), main=True)  # the corrected config binds the directory
    try:
        assert json.loads((workdir / "config.json").read_text())["star"]["top_p"] == 0.95
    finally:
        runs.unlock(str(workdir))


# -------------------------------------------------------------------------------------------- the run lock


_HOLD = """
import sys, time
from genrm_jax import runs
runs.Run(sys.argv[1], {"seed": 0}, main=True)
print("locked", flush=True)
time.sleep(600)
"""


def test_a_run_directory_is_locked_against_a_second_process(tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, workdir], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runs.RunDirectoryError, match=rf"is in use by process {holder.pid} "):
            runs.Run(workdir, {"seed": 0}, main=True)
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel drops the lock of a killed process
        holder.wait()
    try:
        run = runs.Run(workdir, {"seed": 0}, main=True)
        assert open(run.path(runs.LOCK_FILE)).read().strip() == str(os.getpid())
        runs.Run(workdir, {"seed": 0}, main=True)  # this process may open its own run directory again
    finally:
        runs.unlock(workdir)


def test_an_unwritable_run_directory_is_refused_at_the_start(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(runs.RunDirectoryError, match="cannot write to the run directory"):
        runs.Run(str(tmp_path / "file" / "run"), {"seed": 0}, main=True)


# --------------------------------------------------------------------------------------------- checkpoints


def _toy_training(tmp_path, schedule, num_steps=4):
    """A 4-parameter quadratic trained by AdamW at `schedule` (lr per step), checkpointed every step."""
    def loss_fn(params, batch, rng):
        value = jnp.sum((params["w"] - batch["x"]) ** 2)
        return Loss(value, jnp.ones(()), {"loss": value})

    opt = optax.adamw(schedule)
    state = train.init_state({"w": jnp.zeros(4)}, opt)
    batches = iter([{"x": np.full(4, 1.0 + i, np.float32), "mask": np.ones((1, 4), np.int32)} for i in range(num_steps)])
    ckpt = Checkpointer(str(tmp_path / "ckpt"), every=1, keep=5)
    return state, train.make_train_step(loss_fn, opt), batches, ckpt


def test_the_last_good_checkpoint_has_a_finite_state(tmp_path):
    """The loss of step n is computed before step n's update: a finite loss can leave a non-finite state (an
    infinite learning rate from step 2 on here). Before, that state was saved and named "last good checkpoint"
    by the next step's NaN loss."""
    state, step_fn, batches, ckpt = _toy_training(tmp_path, lambda count: jnp.where(count < 1, 0.1, jnp.inf))
    with pytest.raises(train.NonFiniteLossError) as e:
        train.train(state, step_fn, batches, num_steps=4, checkpointer=ckpt, progress=False)
    named = re.search(r"last good checkpoint: (\S+)", str(e.value)).group(1)
    assert named == os.path.join(ckpt.directory, "1"), str(e.value)
    restored = ckpt.restore(state, step=int(os.path.basename(named)))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
    assert ckpt.all_steps() == [1]  # the non-finite state of step 2 was not saved


def test_an_infinite_learning_rate_is_stopped_at_its_first_step(tmp_path):
    state, step_fn, batches, ckpt = _toy_training(tmp_path, lambda count: jnp.inf)
    with pytest.raises(train.NonFiniteLossError, match=r"after step 1 is not finite .*last good checkpoint: "
                                                        r"none saved"):
        train.train(state, step_fn, batches, num_steps=4, checkpointer=ckpt, progress=False)
    assert ckpt.all_steps() == []


def test_a_deleted_or_damaged_checkpoint_is_named_with_what_to_do(tmp_path):
    state, step_fn, batches, ckpt = _toy_training(tmp_path, lambda count: 0.1, num_steps=2)
    train.train(state, step_fn, batches, num_steps=2, checkpointer=ckpt, progress=False)
    assert ckpt.all_steps() == [1, 2]
    step2 = os.path.join(ckpt.directory, "2")
    shutil.rmtree(os.path.join(step2, "state"))
    with pytest.raises(CheckpointError, match=re.escape(f"{step2}: checkpoint of step 2 has no 'state' item") +
                       ".*" + re.escape(f"delete {step2} to resume from step 1")):
        ckpt.restore(state)
    step1 = os.path.join(ckpt.directory, "1")
    for root, _, files in os.walk(os.path.join(step1, "state")):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"\x00garbage")
    with pytest.raises(CheckpointError, match=re.escape(f"{step1}: checkpoint of step 1 cannot be read")):
        ckpt.restore(state, step=1)


# -------------------------------------------------------------------------------------------------- data


def test_duplicate_record_ids_are_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"id": "x", "prompt": "q1", "chosen": "a", "rejected": "b"},
            {"id": "y", "prompt": "q2", "chosen": "a", "rejected": "b"},
            {"id": "x", "prompt": "q3", "chosen": "c", "rejected": "d"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(sources.DataError, match=re.escape(f"{path}:3: id 'x' (subset 'default') is also the id of "
                                                          f"{path}:1")):
        sources.read("jsonl", str(path))
    rows[2]["subset"] = "other"  # ids are keyed by subset (splits._key), as RewardBench's repeated id 3692 is
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(sources.read("jsonl", str(path)).records) == 3


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_compressed_file_is_named(tmp_path, damage):
    path = tmp_path / "pairs.jsonl.gz"
    rows = [{"id": i, "prompt": f"question {i} " * 20, "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(200)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    if damage == "truncated":
        data = data[:len(data) // 2]
    else:
        data = data[:len(data) // 2] + bytes(b ^ 0x5A for b in data[len(data) // 2:])
    path.write_bytes(data)
    with pytest.raises(sources.DataError, match=re.escape(f"{path}: damaged compressed file")):
        sources.read("jsonl", str(path))


# ------------------------------------------------------------------------------------------------ reports


def test_a_report_that_cannot_be_written_leaves_nothing_behind(tmp_path):
    (tmp_path / "report.json").mkdir()  # as unwritable as a report path gets for root
    with pytest.raises(OSError):
        runs.write_json_atomic(str(tmp_path / "report.json"), {"a": 1})
    with pytest.raises(OSError):
        runs.write_jsonl(str(tmp_path / "report.json"), [{"a": 1}])
    with pytest.raises(OSError):
        evaluation.write_report(str(tmp_path), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert not any((tmp_path / "report.json").iterdir())


class _FixedJudge:
    """Judges every pair "A" with P(A) = 0.9 (what `benchmark.evaluate` asks of a judge, nothing more)."""
    config = api.JudgeConfig(method="genrm", position="fixed")

    def compare(self, prompts_, a, b, progress=False, **kw):
        n = len(prompts_)
        return api.Judgment(np.full(n, 0.9), np.ones((n, 1, 1), np.int8), np.zeros((n, 1), bool), [[] for _ in a])


def test_every_skipped_row_is_counted_in_the_report(tmp_path, caplog):
    """Before: a row skipped for an empty answer was logged, and the report said n_skipped 0."""
    path = tmp_path / "pairs.jsonl"
    rows = [{"id": "a", "prompt": "q", "chosen": "yes", "rejected": "no"},
            {"id": "b", "prompt": "q", "chosen": "", "rejected": "no"},
            {"id": "c", "prompt": "q", "chosen": "yes", "rejected": "nah"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data_skipped = {}
    sets = benchmark.eval_sets({"path": str(path), "format": "jsonl"}, 0, data_skipped)
    rep = benchmark.evaluate(_FixedJudge(), sets["pairs"], data_skipped=data_skipped["pairs"], progress=False)
    assert rep["n"] == 2 and rep["n_skipped"] == 1
    assert rep["skipped"] == [{"source": f"{path}:2", "reason": "field 'chosen' is empty or only whitespace"}]
    evaluation.write_report(str(tmp_path), {"pairs/genrm": rep})
    assert json.loads((tmp_path / "report.json").read_text())["datasets"]["pairs/genrm"]["n_skipped"] == 1


# -------------------------------------------------------------------------------------------------- --help


def test_help_exits_0():
    r = subprocess.run([sys.executable, "-m", "experiments.star_sft", "--help"], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "python -m experiments.star_sft" in r.stdout and "--config" in r.stdout


# ------------------------------------------------------------------------------------------------ mutations


class _LabelEngine:
    """Scores the verdict labels with fixed log-probabilities (what `api.forced` asks of an engine)."""

    def __init__(self, p_a):
        self.logp = np.log([p_a, 1.0 - p_a])

    def score_next_token(self, seqs, candidates):
        return np.tile(self.logp, (len(seqs), 1))


@pytest.mark.parametrize("p_a", [0.95, 0.05])
def test_forced_verdicts_at_temperature_1_follow_p_a(p_a):
    """A verdict drawn by a fair coin (ignoring P(A)) would give A half of the time whatever P(A) is."""
    tok = CharTokenizer()
    labels = [[tok.encode("A")[0]], [tok.encode("B")[0]]]
    outs = [[types.SimpleNamespace(text="because", continuation=None)] * 8 for _ in range(8)]
    prompt_ids = [[3 + r, 5, 7] for r in range(8)]
    drawn = [row[4] for seed in range(10)
             for row in api.forced(_LabelEngine(p_a), tok, prompt_ids, outs, "brackets", labels, 1.0, seed)]
    assert len(drawn) == 640
    share_a = np.mean(np.asarray(drawn) == 0)
    assert abs(share_a - p_a) < 0.04, share_a  # 4.6 binomial standard deviations at p = 0.95
    sharp = [row[4] for seed in range(10)
             for row in api.forced(_LabelEngine(p_a), tok, prompt_ids, outs, "brackets", labels, 0.5, seed)]
    # T = 0.5 sharpens P(A) = 0.95 to 0.997: at most a few B in 640 draws
    assert np.mean((np.asarray(sharp) == 0) == (p_a > 0.5)) > 0.98


def test_the_seed_judge_weighs_the_pointwise_parent_by_alpha(monkeypatch):
    """J_SFT = alpha * pointwise + (1 - alpha) * pairwise; with alpha = 0.5 a swap of the parents is invisible."""
    from genrm_jax.star import sre

    def fit(run, name, params, records, ft, model, progress, mesh=None):
        return {"w": jnp.full(3, 1.0 if name == "seed_pointwise" else 0.0)}, {"steps": 1}

    monkeypatch.setattr(sre, "_fit", fit)
    monkeypatch.setattr(sre, "sample_task", lambda *a, **k: [])
    monkeypatch.setattr(sre, "seed_records", lambda task, lines, data: [{"task": task}])
    monkeypatch.setattr(sre, "summary", lambda task, lines: {})
    judges = types.SimpleNamespace(sre=sre.SreConfig(alpha=0.25), seed=0)
    run = types.SimpleNamespace(main=False, path=lambda *parts: "/nonexistent/" + "/".join(parts))
    inputs = {task: ([{"id": "1"}],) for task in sre.TASKS}
    params, _ = sre.seed_judge(run, judges, types.SimpleNamespace(params=None), finetune.FinetuneConfig(), inputs,
                               False)
    np.testing.assert_allclose(np.asarray(params["w"]), 0.25)
