"""Accelerator benchmark: genrm-jax against PyTorch + transformers on the same device, random-init weights.

    python -m experiments.bench_accel            # Llama-3.2-1B shapes on the default device
    python -m experiments.bench_accel --tiny     # tiny shapes: runs on a CPU in seconds (the test suite runs it)

Each side runs in its own child process (`--side ours|torch`), so neither sees the other's device memory, and a
failing side is reported in the JSON (`"error"`) instead of ending the run. Workloads, as in issue 22:
- `train`: one optimiser step (next-token cross-entropy, global-norm clipping, AdamW) on 8 x 2048 tokens.
  Ours: fp32 params, bf16 compute, remat "dense", `LlamaConfig.kernels="auto"` (cuDNN attention on a GPU);
  theirs: fp32 params under bf16 autocast, SDPA attention, fused AdamW on CUDA. Tokens per second of the fastest
  step, MFU against the bf16 matmul peak measured in the same child and against the device's nominal peak (the
  model FLOPs of `bench_train.flops_per_token`), peak device memory (peak RSS on a CPU).
- `sample_32x8`: 32 prompts x 8 samples, 512-token prompts, 256 new tokens (EOS ignored), T 1.0, top-p 0.95,
  bf16 weights and KV cache; and `sample_1x1`: one prompt, one sample. Generated tokens per second, prefill
  included, compilation excluded (a warm-up first), and the share of the roofline (`bench_sampling`'s: the
  FLOPs at the measured peak or the weights + cache read once per step at the measured bandwidth).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np

from experiments.bench_train import flops_per_token
from experiments.machine import best_seconds, peak_rss_gb

# name -> model shape (random init, tied embeddings as Llama-3.2-1B)
SHAPES = {
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
               num_kv_heads=8, head_dim=64),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16),
}
# (train batch, train length, [(workload, prompts, samples)], prompt tokens, new tokens)
FULL = dict(batch=8, seq=2048, sampling=[("sample_32x8", 32, 8), ("sample_1x1", 1, 1)], prompt=512, new=256)
TINY = dict(batch=2, seq=32, sampling=[("sample_4x2", 4, 2), ("sample_1x1", 1, 1)], prompt=16, new=8)
TOP_P = 0.95
# bf16 dense matmul peaks from the vendors' data sheets, by `jax.devices()[0].device_kind` / torch device name
NOMINAL_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12,
                      "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def nominal_peak(device_kind: str) -> float | None:
    return next((f for name, f in NOMINAL_BF16_FLOPS.items() if name.lower() in device_kind.lower()), None)


def _prompts(vocab: int, count: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=length).tolist() for _ in range(count)]


class _IdTokenizer:
    """Completions of a random-weight model need no text: token ids as words (what the Engine decodes)."""

    def decode(self, ids, skip_special_tokens=False) -> str:
        return " ".join(map(str, ids))


def _config_dict(args) -> dict:
    shape = dict(SHAPES[args.shape])
    for key in ("num_layers", "hidden_size", "intermediate_size", "vocab_size"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    return shape


# ------------------------------------------------------------------------------------------------ ours


def bench_ours(args) -> dict:
    import jax
    import jax.numpy as jnp

    from experiments.bench_sampling import roofline_seconds
    from experiments.machine import memory_bandwidth
    from genrm_jax import losses, runtime, sampling, train
    from genrm_jax.io import Model
    from genrm_jax.models import llama

    runtime.apply()
    sizes = TINY if args.tiny else FULL
    compute = "float32" if args.tiny else "bfloat16"
    dev = jax.devices()[0]
    out = {"device": dev.device_kind, "platform": dev.platform, "kernels": None, "jax": jax.__version__}
    n = 256 if args.tiny else 8192
    x = jnp.ones((n, n), compute)
    peak = 2 * n ** 3 / best_seconds(jax.jit(lambda a: a @ a), x, 3 if args.tiny else 10)
    out |= {"peak_flops_measured": peak, "peak_flops_nominal": nominal_peak(dev.device_kind)}

    base = llama.LlamaConfig(**_config_dict(args), tie_word_embeddings=True, max_position_embeddings=4096,
                             pad_token_id=0, eos_token_ids=(2,), bos_token_id=1)
    out["kernels"] = llama.resolve_kernels(base)
    out["num_params"] = base.num_params

    def section(name, fn):
        try:
            out[name] = fn()
        except Exception as e:  # a failing workload is reported, the others still run
            out[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}

    def run_train():
        cfg = base.replace(param_dtype="float32", compute_dtype=compute, remat=True, remat_policy="dense")
        params = llama.init(jax.random.PRNGKey(0), cfg)
        b, t = sizes["batch"], sizes["seq"]
        tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, size=(b, t)).astype(np.int32)
        loss_mask = np.ones_like(tokens)
        loss_mask[:, 0] = 0
        data = {"tokens": tokens, "mask": np.ones_like(tokens), "loss_mask": loss_mask}
        opt = train.make_optimizer(train.OptimConfig(total_steps=1000))
        step = train.make_train_step(losses.make_loss_fn("sft", cfg), opt)
        state = train.init_state({"model": params}, opt)
        del params
        t0 = time.perf_counter()
        state, m = step(state, data, jax.random.PRNGKey(0))
        float(m["loss"])
        first = time.perf_counter() - t0
        times = []
        for i in range(args.steps):
            t0 = time.perf_counter()
            state, m = step(state, data, jax.random.PRNGKey(i + 1))
            float(m["loss"])
            times.append(time.perf_counter() - t0)
        tok_s = b * t / min(times)
        fpt = flops_per_token(cfg, t)
        nominal = out["peak_flops_nominal"]
        return {"tok_s": tok_s, "step_s": times, "first_step_s": first, "loss": float(m["loss"]),
                "flops_per_token": fpt, "mfu_measured": tok_s * fpt / peak,
                "mfu_nominal": tok_s * fpt / nominal if nominal else None, "peak_memory_gb": _peak_memory_gb(dev)}

    section("train", run_train)

    cfg = base.replace(param_dtype=compute, compute_dtype=compute)
    model = Model(cfg, llama.init(jax.random.PRNGKey(1), cfg), _IdTokenizer(), "random-init")
    engine = sampling.Engine(model, cache_dtype=compute, max_batch=256)
    bandwidth = memory_bandwidth(nbytes=(1 << 24) if args.tiny else (1 << 30))
    out["memory_bandwidth"] = bandwidth
    itemsize = jnp.dtype(compute).itemsize

    def run_sampling(count, samples):
        prompts = _prompts(cfg.vocab_size, count, sizes["prompt"])
        sp = sampling.SamplingParams(temperature=1.0, top_p=TOP_P, max_new_tokens=sizes["new"], n=samples,
                                     ignore_eos=True)
        engine.warmup(prompts, sp)
        best = 0.0
        for rep in range(2):
            t0 = time.perf_counter()
            done = engine.generate(prompts, sampling.SamplingParams(**{**sp.__dict__, "seed": rep}))
            made = sum(len(c.token_ids) for cs in done for c in cs)
            best = max(best, made / (time.perf_counter() - t0))
        roof = roofline_seconds(cfg, [sizes["prompt"]] * count, samples, sizes["new"], peak, bandwidth,
                                cache_bytes=itemsize, weight_bytes=itemsize)
        roof_tok_s = count * samples * sizes["new"] / roof
        return {"tok_s": best, "roofline_tok_s": roof_tok_s, "of_roofline": best / roof_tok_s}

    for name, count, samples in sizes["sampling"]:
        section(name, lambda: run_sampling(count, samples))
    return out


def _peak_memory_gb(device) -> float:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 1e9
    return peak_rss_gb()  # the CPU: the process's peak resident memory


# ----------------------------------------------------------------------------------------------- torch


def bench_torch(args) -> dict:
    import torch
    import transformers

    sizes = TINY if args.tiny else FULL
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(os.cpu_count() or 1)
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "transformers": transformers.__version__}
    shape = _config_dict(args)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_kv_heads"], head_dim=shape["head_dim"], tie_word_embeddings=True,
        max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="sdpa")
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cuda)

    def section(name, fn):
        try:
            out[name] = fn()
        except Exception as e:
            out[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run_train():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(hf_cfg).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95), weight_decay=0.1,
                                **({"fused": True} if cuda else {}))
        b, t = sizes["batch"], sizes["seq"]
        tokens = torch.randint(3, hf_cfg.vocab_size, (b, t), device=device)

        def one():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(**autocast):
                loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return float(loss.detach())

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        one()
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            sync()
            t0 = time.perf_counter()
            loss = one()
            times.append(time.perf_counter() - t0)
        memory = torch.cuda.max_memory_allocated() / 1e9 if cuda else peak_rss_gb()
        del model, opt
        return {"tok_s": b * t / min(times), "step_s": times, "first_step_s": first, "loss": loss,
                "peak_memory_gb": memory}

    section("train", run_train)
    if cuda:
        torch.cuda.empty_cache()
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(hf_cfg).to(device, torch.bfloat16 if cuda else torch.float32).eval()

    def run_sampling(count, samples):
        ids = torch.tensor(_prompts(hf_cfg.vocab_size, count, sizes["prompt"]), device=device)
        kw = dict(do_sample=True, temperature=1.0, top_p=TOP_P, top_k=0, num_return_sequences=samples,
                  pad_token_id=0, max_new_tokens=sizes["new"], min_new_tokens=sizes["new"])
        best = 0.0
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})
            for rep in range(2):
                torch.manual_seed(rep)
                sync()
                t0 = time.perf_counter()
                gen = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
                sync()
                best = max(best, (gen.shape[1] - ids.shape[1]) * gen.shape[0] / (time.perf_counter() - t0))
        return {"tok_s": best}

    for name, count, samples in sizes["sampling"]:
        section(name, lambda: run_sampling(count, samples))
    return out


# ---------------------------------------------------------------------------------------------- parent


def _child(side: str, argv: list[str], timeout: float) -> dict:
    """One side in a fresh process; its last stdout line is its JSON. A crash becomes {"error": ...}."""
    cmd = [sys.executable, "-m", "experiments.bench_accel", "--side", side] + argv
    try:
        run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        return {"error": f"exit status {run.returncode}", "stderr": run.stderr[-3000:]}
    return json.loads(lines[-1])


def summary(ours: dict, torch_side: dict) -> dict:
    """Ours / theirs per workload, where both sides produced a figure."""
    ratios = {}
    for name, row in ours.items():
        theirs = torch_side.get(name)
        if isinstance(row, dict) and isinstance(theirs, dict) and "tok_s" in row and "tok_s" in theirs:
            ratios[name] = row["tok_s"] / theirs["tok_s"]
    return ratios


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and workloads: a CPU runs it in seconds")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None,
                    help="model shape (default: 1b, tiny with --tiny)")
    for key in ("num_layers", "hidden_size", "intermediate_size", "vocab_size"):
        ap.add_argument("--" + key.replace("_", "-"), dest=key, type=int, default=None, help=f"override the shape's {key}")
    ap.add_argument("--steps", type=int, default=3, help="timed train steps per side (the fastest counts)")
    ap.add_argument("--skip-torch", action="store_true", help="do not run the PyTorch side")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed to each side's process")
    ap.add_argument("--side", choices=("ours", "torch"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.shape = args.shape or ("tiny" if args.tiny else "1b")
    if args.side is not None:
        print(json.dumps((bench_ours if args.side == "ours" else bench_torch)(args)))
        return 0
    passed = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--skip-torch"]
    ours = _child("ours", passed, args.timeout)
    theirs = {"skipped": True} if args.skip_torch else _child("torch", passed, args.timeout)
    print(json.dumps({"shape": args.shape, "config": _config_dict(args), "tiny": args.tiny, "ours": ours,
                      "torch": theirs, "ours_over_torch": summary(ours, theirs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
