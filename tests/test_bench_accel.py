"""`python -m experiments.bench_accel --tiny`: both sides run in their own processes and report every field."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_accel_tiny_reports_both_sides():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", "experiments.bench_accel", "--tiny", "--steps", "1"], cwd=ROOT,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    ours, torch_side = out["ours"], out["torch"]
    assert out["shape"] == "tiny" and out["config"]["num_kv_heads"] == 2
    assert ours["peak_flops_measured"] > 0 and "peak_flops_nominal" in ours
    train = ours["train"]
    assert "error" not in train, train.get("traceback")
    assert train["tok_s"] > 0 and 0 < train["mfu_measured"] < 1 and train["peak_memory_gb"] > 0
    assert abs(train["loss"] - 5.55) < 0.5  # ln(256) = 5.55: a random-init model's cross-entropy
    for name in ("sample_4x2", "sample_1x1"):
        row = ours[name]
        assert "error" not in row, row.get("traceback")
        assert row["tok_s"] > 0 and 0 < row["of_roofline"] < 1 and row["roofline_tok_s"] > row["tok_s"]
    # the PyTorch side ran in its own process (or says why it could not)
    for name in ("train", "sample_4x2", "sample_1x1"):
        row = torch_side.get(name, torch_side)
        assert ("tok_s" in row and row["tok_s"] > 0) or "error" in row
        if "tok_s" in row:
            assert out["ours_over_torch"][name] == ours[name]["tok_s"] / row["tok_s"]
