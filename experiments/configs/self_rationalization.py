r"""Self-Rationalization: a pointwise and a pairwise judge trained by SFT on hinted rationales and merged (J_SFT),
then improved by iterative DPO on preference pairs built from its own judgments (genrm_jax/star/sre.py).

  python -m experiments.self_rationalization --workdir runs/sre [--config=experiments/configs/self_rationalization.py:PRESET] [--config.x.y=...]

Presets:
  smoke    the tiny random model, a dozen pairs: seconds, for tests
  default  the embedded SmolLM2-135M-Instruct on HH-RLHF (pointwise judgments built from pairs under the
           helpfulness / harmlessness rubrics), 12 training pairs, 4 judgments per input, 2 iterations, evaluated on
           the held-out HH-RLHF pairs only (no RewardBench sample): about 20 minutes on 2 cores
  learn    the verifiable pairs of the `learn` preset (experiments/configs/learn.py) judged under a correctness
           rubric; 96 training pairs, no baselines, the untrained and the final judge evaluated on 431 pairs in
           both orders (docs/learning.md)
  small    the same model at a scale where the comparison can say something (hours here, minutes on a GPU)
  paper    Llama-3.1-8B-Instruct by path (--config.model), Preference-Collection pairs (--config.data.train_path)
           and Feedback-Collection gold scores (--config.data.pointwise_path) by path, N = 10, 5000 then 500
           inputs, 2 iterations
Selection: --config.sre.selection=correct|majority|meta (--config.sre.margin=1|2 with correct;
--config.sre.meta_judge=PATH for another meta-judge); --config.sre.seed_mode=multitask for one multi-task SFT.
"""
from experiments.configs import presets
from genrm_jax.judge import pointwise
from genrm_jax.star import sre

PRESETS = presets.PRESETS


def get_config(arg: str | None = None):
    preset = arg or "default"
    c = presets.base(preset, "self_rationalization")
    del c.star  # the STaR loop's group; Self-Rationalization is configured by `sre`
    c.judge.prompt = "pairwise"  # the pairwise evaluation judge: rubric, feedback, `[RESULT] 1|2`
    if preset in ("default", "small"):  # the rubric prompts are ~370 tokens before any conversation or answer
        c.judge.max_prompt_tokens = 576 if preset == "default" else 1280
        c.train.update(max_len=640 if preset == "default" else 1536,
                       buckets=(640,) if preset == "default" else (768, 1536))
    c.pointwise = presets.group(pointwise.PointwiseConfig, max_new_tokens=c.judge.max_new_tokens,
                                max_answer_tokens=c.judge.max_answer_tokens,
                                max_prompt_tokens=c.judge.max_prompt_tokens)
    c.data.pointwise_path = ""  # Feedback-Collection style gold scores (sources "feedback-collection"), optional
    c.data.pointwise_eval = 0   # held-out gold-scored items evaluated (0 = all)
    c.sre = presets.group(sre.SreConfig, samples=4, max_new_tokens=32)
    c.train.beta = 1.0  # DPO's beta, as STaR-DPO's
    if preset == "smoke":
        c.sre.update(samples=2, max_new_tokens=8, consistency_samples=3, chunk=4, sft_learning_rate=1e-3)
    elif preset == "default":
        # Twelve evaluations (six judges, pairwise and pointwise) of ~600-token rubric prompts: held-out HH-RLHF only,
        # so that the run takes about 20 minutes on 2 cores; RewardBench sections come with `small` and `paper`.
        c.data.update(train_pairs=12, rewardbench_per_subset=0)
        c.judge.max_answer_tokens = c.pointwise.max_answer_tokens = 32
        c.sre.pairs_per_input = 1  # a DPO step on ~600-token pairs takes most of a minute here
    elif preset == "small":
        c.sre.update(samples=8, max_new_tokens=128, seed_samples=4)
    elif preset == "learn":
        # Verifiable pairs under the correctness rubric (data/rubrics.py): the rubric prompts of their short
        # questions and answers take <= 343 tokens, the hinted ones (J_SFT's seed rationales) <= 388; rationales
        # as short as the STaR methods' on this preset.
        c.judge.max_prompt_tokens = c.pointwise.max_prompt_tokens = 416
        c.sre.max_new_tokens = c.judge.max_new_tokens
        c.train.update(max_len=448, buckets=(448,))
        # Four evaluations of 431 pairs in both orders (the untrained and the final judge, pairwise and pointwise:
        # ~8 minutes each here) are most of the run, so J_SFT and the DPO iterations get 32 inputs each (96
        # training pairs), one DPO pair per input, and no self-consistency or best-of-N baseline (each is two
        # more evaluations).
        c.data.verifiable.train_per_family = 48
        c.sre.update(baselines=(), pairs_per_input=1)
    elif preset == "paper":
        c.data.update(train_format="preference-collection", pointwise_eval=1000)
        c.pointwise.update(max_new_tokens=1024, max_answer_tokens=None, max_prompt_tokens=None)
        c.sre.update(samples=10, inputs=(5000, 500), max_new_tokens=1024, chunk=32)
    return c
