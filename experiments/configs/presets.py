r"""Shared presets of the training experiments (each experiment's config file starts from `base(preset, method)`
and sets what is its own). Groups: `method` (genrm_jax/methods.py), `model`, `seed`, `data`
(data/splits.experiment_data), `judge` (the evaluation judge: api.JudgeConfig), `star` (star.loop.StarConfig),
`train` (finetune.FinetuneConfig), `engine`, `eval.ks`, `mesh` (data, fsdp, model).

The groups of a settings dataclass hold every one of its fields, at the dataclass's default unless a preset says
otherwise (`group`): a default is written once, in the dataclass, and a preset lists only what differs.

  smoke    the tiny random model ("tiny-random"), a dozen pairs: seconds, for tests
  default  the embedded SmolLM2-135M-Instruct, HH-RLHF train / held-out, a stratified RewardBench sample,
           sized so that `make run` (STaR-DPO) finishes in minutes on a 2-core CPU
  small    the same model at the scale where the ablation can say something: hours on this CPU, minutes on a GPU
  paper    Llama-3.1-8B-Instruct by local path and UltraFeedback / UltraInteract files by path (set
           --config.model and --config.data.train_path), 3 iterations, 32 samples, lr 1e-6, DPO beta 1.0, maj@32
  learn    the default preset's groups on verifiable arithmetic / ordering pairs (data/verifiable.py), evaluated
           in distribution and on shifted ranges (experiments/configs/learn.py, docs/learning.md)
"""
import dataclasses
import typing

import ml_collections

from genrm_jax import finetune, methods
from genrm_jax.judge import api
from genrm_jax.star import loop
from experiments.configs import learn

PRESETS = ("smoke", "default", "small", "paper", "learn")


def group(cls, *, exclude=(), **overrides) -> ml_collections.ConfigDict:
    """A config group of every field of the settings dataclass `cls` but `exclude`: its default, or `overrides`.
    A field whose value is None becomes a typed placeholder, so that `--config.x.y=v` can still set it."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {sorted(unknown)}")
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        value = overrides.get(f.name, getattr(defaults, f.name))
        if value is None:
            kinds = [t for t in typing.get_args(hints[f.name]) if t is not type(None)]
            value = ml_collections.config_dict.placeholder(kinds[0] if kinds else object)
        out[f.name] = value
    return ml_collections.ConfigDict(out)


def base(preset: str, method: str | None = None) -> ml_collections.ConfigDict:
    """The shared groups at `preset`; `method` (every experiment config gives one) is the methods.py entry."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if preset == "learn":  # the default preset's groups on verifiable pairs the 135M judge can learn (learn.py)
        return learn.learn(base("default", method))
    c = ml_collections.ConfigDict()
    if method is not None:
        c.method = methods.get(method).name
    c.preset = preset
    c.model = "smollm2-135m-instruct"
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(
        train="hh-rlhf", train_path="", train_format="jsonl", held_out_fraction=0.2, train_pairs=24,
        held_out_per_subset=2, rewardbench_per_subset=1))
    c.judge = group(api.JudgeConfig, temperature=0.0, max_new_tokens=32, position="both", verdict="force",
                    max_answer_tokens=48, max_prompt_tokens=320)
    c.star = group(loop.StarConfig, samples=4, max_new_tokens=32)
    # The paper's lr 1e-6 is for 8B models over thousands of steps (the `paper` preset); a STaR iteration of the
    # default preset is a few steps, where 1e-6 leaves the weights where they were.
    c.train = group(finetune.FinetuneConfig, exclude=("kind",),  # the loss is the method's
                    learning_rate=1e-5, max_len=448, buckets=(448,), checkpoint_every=4)
    # share_prefix: the tokens all prompts of a call start with (the judge's instructions) run once per batch
    c.engine = ml_collections.ConfigDict(dict(max_batch=32, cache_dtype="float32", share_prefix=True))
    # bias: position, length and master-key attack rates (judge/bias.py) before training and after, on the first
    # bias_pairs in-distribution pairs; the attack judges 2 x 10 keys x bias_attack_pairs pairs more.
    # every_iteration: evaluate after every STaR / Self-Rationalization iteration (false: only after the last)
    # shared_dir: where runs of one base model share its untrained judge's evaluation (report.evaluate; the
    # ablation sets it); "" = no sharing
    c.eval = ml_collections.ConfigDict(dict(ks=(1,), bias=True, bias_pairs=8, bias_attack_pairs=2,
                                            every_iteration=True, shared_dir=""))
    # The device mesh (sharding.mesh_from_config): -1 takes the devices left over. Pure data parallel by default;
    # an 8B model on a pod needs fsdp (params and AdamW moments split) and/or model (tensor parallel) > 1.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    # Memory of one device for the planner's check before any weight loads (genrm_jax/plan.py); 0 = what the
    # device reports (accelerators; XLA:CPU reports none, so on CPU there is no check unless this is set).
    c.device_memory_gib = 0.0
    # Which kernels compute the model (LlamaConfig.kernels): "auto" = the CPU kernels on one CPU device, XLA's
    # under a mesh of several devices or on an accelerator; "xla" runs what TPUs and GPUs run, on any backend.
    c.kernels = "auto"
    c.compute_dtype = "float32"  # activations' dtype (the params stay float32); "bfloat16" on accelerators

    if preset == "smoke":
        c.model = "tiny-random"
        c.data.update(train_pairs=6, held_out_per_subset=1, rewardbench_per_subset=0)
        c.judge.update(max_new_tokens=8, max_answer_tokens=16, max_prompt_tokens=1536)
        c.star.update(samples=4, max_new_tokens=8, chunk=2)
        c.train.update(learning_rate=1e-3, batch_size=2, max_len=1600, buckets=(1600,), checkpoint_every=1)
        c.engine.max_batch = 8
        c.eval.update(bias_pairs=2, bias_attack_pairs=1)
    elif preset == "small":
        c.data.update(train_pairs=600, held_out_per_subset=50, rewardbench_per_subset=10)
        c.judge.update(k=4, temperature=1.0, top_p=0.95, max_new_tokens=128, max_answer_tokens=256,
                       max_prompt_tokens=1024)
        c.star.update(samples=8, max_new_tokens=128)
        c.train.update(epochs=2, batch_size=8, max_len=1280, buckets=(640, 1280), checkpoint_every=20)
        c.eval.ks = (1, 2, 4)
    elif preset == "paper":
        c.model = ""  # a local Llama-3.1-8B-Instruct Hugging Face directory: --config.model=/path/to/it
        c.data.update(train="file", train_format="ultrafeedback", train_pairs=0, held_out_fraction=0.05,
                      held_out_per_subset=0, rewardbench_per_subset=0)
        c.data.rewardbench_per_subset = 1000  # every RewardBench pair (no subset has more)
        c.judge.update(k=16, temperature=1.0, top_p=0.95, max_new_tokens=1024, max_answer_tokens=None,
                       max_prompt_tokens=None)
        c.star.update(samples=32, max_new_tokens=1024, chunk=32)
        # 32 pairs a step in 16 micro-batches of 2 and bf16 activations: an 8B model then fits on v5p-8 (the
        # memory planner's figures in docs/scale-out.md; the whole batch at once needs 675 GiB per chip)
        c.train.update(learning_rate=1e-6, epochs=3, batch_size=32, accum_steps=16, max_len=4096,
                       buckets=(1024, 2048, 4096), checkpoint_every=50)
        c.compute_dtype = "bfloat16"
        c.eval.ks = (1, 2, 4, 8, 16, 32)
        # 8B weights + AdamW moments in fp32 are ~128 GB: split them over every device (train.batch_size must
        # be a multiple of the device count), no pure data parallelism
        c.mesh.update(data=1, fsdp=-1)
    return c
