r"""Zero-shot LLM-as-judge evaluation (big_vision style: `--config=experiments/configs/llm_judge.py:PRESET`).

Presets:
  default  on a stratified RewardBench sample of `eval.per_subset` pairs from each of the 23 subsets, sized to
           finish in minutes on a 2-core CPU: the CoT judge (the paper's LLM-as-judge prompt, greedy, one
           judgment per pair, `[[A]]`/`[[B]]` parsed) and the GenRM verdict-token probabilities (both orders).
  full     the same on all 2985 RewardBench pairs.
  genrm    GenRM verdict-token probabilities only, on a larger stratified sample.
  majk     32 sampled verdicts per pair (temperature 1): maj@k curves for k = 1 ... 32 with 95% CIs.
  hh       the CoT judge on the four bundled HH-RLHF test splits (stratified by split).
  smoke    the tiny random model on 4 RewardBench pairs: seconds, for tests.
  small    10 pairs per RewardBench subset, 4 sampled judgments per order with forced verdicts, maj@1/2/4.
  paper    a local Llama-3.1-8B-Instruct (--config.model=/path/to/it) on all of RewardBench, maj@32.

Any preset takes a file in the generic JSONL format instead of the bundled data:
  python -m experiments.llm_judge --workdir DIR --config.eval.path=FILE.jsonl --config.eval.limit=N

Methods are the zero-shot ones, "cot" and "genrm": a base model judges by its words or its verdict-token
probabilities. "bt" and "pairrm" score with a trained scalar reward head, which a zero-shot run does not have,
so they are rejected before the model loads (a Bradley-Terry experiment will train and evaluate them).
Prompts longer than the model's context lose conversation turns from the left; pairs whose answers alone
(after `judge.max_answer_tokens`) do not fit are skipped, counted and listed in the report.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "default"
    c = ml_collections.ConfigDict()
    c.method = "llm_judge"  # genrm_jax/methods.py; the judges themselves are `methods`
    c.preset = preset
    c.model = "smollm2-135m-instruct"  # registered name, GGUF file or Hugging Face directory
    c.seed = 0
    c.methods = "cot,genrm"  # comma-separated: cot and/or genrm, judged in turn; reported as DATASET/METHOD

    c.judge = ml_collections.ConfigDict(dict(
        method="cot", prompt="judge", k=1, temperature=0.0, top_p=1.0, max_new_tokens=96, position="fixed",
        invalid_score=0.5, max_answer_tokens=128, stop_strings=(), reward_eps=1e-3,
    ))
    c.per_method = ml_collections.ConfigDict({"genrm": {"position": "both"}})  # overrides of `judge`
    c.engine = ml_collections.ConfigDict(dict(max_batch=16, cache_dtype="float32", share_prefix=True))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))  # as presets.base: the device mesh
    c.kernels = "auto"  # LlamaConfig.kernels ("auto": XLA's under a mesh of several devices)

    c.eval = ml_collections.ConfigDict()
    c.eval.dataset = "rewardbench"   # "rewardbench" | "hh-rlhf" (bundled files); ignored when `path` is set
    c.eval.path = ""                 # a preference file; its format is `eval.format`
    c.eval.format = "jsonl"          # for `path`: a sources.FORMATS entry, or rewardbench2 | rm-bench (data/benchmarks.py)
    c.eval.per_subset = 1            # stratified sample size per subset (bundled data); 0 = every pair
    c.eval.limit = ml_collections.config_dict.placeholder(int)  # at most this many pairs per dataset
    c.eval.ks = (1, 2, 4, 8, 16, 32)
    # position, length and master-key attack rates (judge/bias.py) on the first bias_pairs pairs of each set; the
    # attack judges 2 x 10 content-free keys x bias_attack_pairs pairs more. false skips the extra judging.
    c.eval.bias = True
    c.eval.bias_pairs = 16
    c.eval.bias_attack_pairs = 4

    if preset == "default":
        pass
    elif preset == "full":
        c.eval.per_subset = 0
    elif preset == "genrm":
        c.methods = "genrm"
        c.eval.per_subset = 10
    elif preset == "majk":
        # 32 sampled verdicts per pair from the GenRM prompt: a 135M model gives no parseable CoT verdicts
        # (see the default run), so bare verdict letters are what carries signal to vote on. Use
        # --config.judge.prompt=judge --config.judge.max_new_tokens=256 for CoT maj@k with a stronger model.
        c.methods = "cot"
        c.judge.update(prompt="genrm", k=32, temperature=1.0, max_new_tokens=4)
        c.engine.max_batch = 32  # one batch per prompt: its 32 samples share one prefill
        c.eval.per_subset = 1
    elif preset == "hh":
        c.eval.dataset = "hh-rlhf"
        c.eval.per_subset = 12
    elif preset == "smoke":  # the tiny random model: seconds, for tests
        c.model = "tiny-random"
        c.judge.update(max_new_tokens=8, max_answer_tokens=16)
        c.eval.limit = 4
        c.eval.update(bias_pairs=2, bias_attack_pairs=1)
    elif preset == "small":  # the scale of the training experiments' `small` preset, with sampled maj@k
        c.judge.update(k=4, temperature=1.0, top_p=0.95, max_new_tokens=128, position="both", verdict="force")
        c.eval.per_subset = 10
        c.eval.ks = (1, 2, 4)
    elif preset == "paper":  # a local Llama-3.1-8B-Instruct (--config.model=/path) on all of RewardBench, maj@32
        c.model = ""
        c.judge.update(k=32, temperature=1.0, top_p=0.95, max_new_tokens=1024, max_answer_tokens=None)
        c.engine.max_batch = 32
        c.eval.per_subset = 0
    else:
        raise ValueError(f"unknown preset {preset!r}; expected default, full, genrm, majk, hh, smoke, small or paper")
    return c
