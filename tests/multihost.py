"""One process of the multi-host test (test_multihost.py): `python tests/multihost.py OUT_DIR`.

With JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set (two processes, 2 CPU devices each) it is one
host of a 2-host run; without them, the one-process reference (4 devices). Either way: the same (data 2, fsdp 2)
mesh, a tiny HF model loaded into its shards, a DPO fit (reference log-probs, train steps, orbax checkpoints),
greedy samples from Engine(mesh=...), writes through the main-process gate, and the export. Prints one JSON line.
"""
from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from genrm_jax import distributed, finetune, runs, sharding  # noqa: E402


def main(out: str) -> None:
    distributed.initialize()
    from chartok import CharTokenizer
    from tinyhf import make_model_dir

    from genrm_jax.io import hf, load_model

    pid = jax.process_index()
    assert jax.device_count() == 4, jax.devices()
    mesh = sharding.make_mesh(data=2, fsdp=2)
    model_dir = os.path.join(out, "model")
    if distributed.is_main_process():
        make_model_dir(model_dir, num_heads=4, num_kv_heads=2)
    sync("model written")
    model = load_model(model_dir, mesh=mesh)
    assert not model.params["embed"].is_fully_addressable or jax.process_count() == 1

    records = [{"messages": [{"role": "user", "content": f"q{i} which?"}], "chosen": f"good {i}",
                "rejected": f"bad answer {i}"} for i in range(10)]
    ft = finetune.FinetuneConfig(kind="dpo", learning_rate=1e-3, batch_size=8, max_len=32, buckets=(32,),
                                 checkpoint_every=1)
    params, info = finetune.fit(model.params, records, ft, model.config, CharTokenizer(), os.path.join(out, "fit"),
                                progress=False, mesh=mesh)

    samples = None
    try:
        from genrm_jax.sampling import Engine, SamplingParams

        model.params, model.config = params, model.config.replace(kernels="xla")
        engine = Engine(model, mesh=mesh, max_batch=4)
        done = engine.generate([[1, 5, 9, 12], [1, 7, 7]], SamplingParams(temperature=0.0, max_new_tokens=4))
        samples = [c[0].token_ids for c in done]
        scores = engine.score_next_token([[1, 5, 9, 12], [1, 7, 7]], [3, 4]).tolist()
        samples = {"tokens": samples, "scores": scores}
    except Exception as e:  # noqa: BLE001 -- reported, not hidden: the test names what failed
        samples = f"{type(e).__name__}: {e}"[:500]

    runs.write_json_atomic(os.path.join(out, f"report_by_{pid}.json"), {"final_loss": info["final_loss"]})
    with runs.open_output(os.path.join(out, f"samples_by_{pid}.jsonl")) as f:
        runs.append_jsonl(f, {"id": "x", "samples": samples})
    hf.save_hf(params, model.config, os.path.join(out, "export"))
    print(json.dumps({"process": pid, "processes": jax.process_count(), "final_loss": info["final_loss"],
                      "steps": info["steps"], "samples": samples,
                      "compilation_cache": jax.config.jax_enable_compilation_cache}), flush=True)


def sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


if __name__ == "__main__":
    # the test sends SIGUSR1 before it kills a process that is past its time: the stacks say where it waited
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    main(sys.argv[1])
