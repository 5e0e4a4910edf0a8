r"""The `learn` preset: the embedded model trained on verifiable judging pairs (genrm_jax/data/verifiable.py),
where a 135M judge can acquire the skill and a program checks every label (issue 23).

    c = presets.base("default"); learn(c)     # then the method's own settings, as for any preset

Data: in-distribution pairs of the kept families for training, >= 200 held-out in-distribution pairs and
>= 200 shifted pairs for evaluation (both answer orders), plus small HH-RLHF and RewardBench samples so the
usual columns stay. Judge: the short `verify` prompt. STaR: 2 iterations over 2 parts, 4 judgments per pair
(2 per order) with short rationales (24 tokens: enough to restate a sum or an order); lr 1e-4, one epoch per
iteration (the baselines, which train once: 2 epochs); evaluated before training and after the last iteration
(docs/learning.md has the times).
"""
import ml_collections

from genrm_jax import methods

# Families kept: those where the zero-shot judge (P(A) vs P(B), both orders, 50 held-out pairs each) is near
# chance: arithmetic 0.58, ordering 0.60. Left out: counting (0.90: an off-by-one answer of 0 for a letter taken
# from the word gives itself away) and format (0.74: a capital letter or a missing word is visible without
# reasoning). Both stay available (--config.data.verifiable.families=all).
FAMILIES = "arithmetic,ordering"
TRAIN_PER_FAMILY = 96       # 192 training pairs: 2 STaR parts of 96 pairs, 384 judgments sampled per iteration
EVAL_PER_FAMILY = 100       # >= 200 held-out in-distribution pairs (the floor)
SHIFTED_PER_FAMILY = 100    # >= 200 shifted pairs (3-4-digit +/-; five 3-digit numbers, descending)


def learn(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Mutates a base config (presets.base) into the `learn` preset and returns it."""
    c.preset = "learn"
    c.model = "smollm2-135m-instruct"
    c.data.update(train="verifiable", train_pairs=0, held_out_per_subset=2, rewardbench_per_subset=1)
    c.data.verifiable = ml_collections.ConfigDict(dict(
        families=FAMILIES, train_per_family=TRAIN_PER_FAMILY, eval_per_family=EVAL_PER_FAMILY,
        shifted_per_family=SHIFTED_PER_FAMILY))
    # Answers and questions are a few dozen tokens; the prompt is the judge's instructions plus them.
    # The `verify` prompt (judge/prompts.py): the judge's task for questions with one correct answer in ~80 tokens
    # of instructions where `judge` takes ~220, and prefill is most of what an evaluation costs here.
    c.judge.update(method="cot", prompt="verify", k=1, temperature=0.0, top_p=1.0, max_new_tokens=24,
                   position="both", verdict="force", max_answer_tokens=48, max_prompt_tokens=320)
    c.star.update(iterations=2, parts=2, samples=4, temperature=1.0, top_p=0.95, max_new_tokens=24,
                  verdict="force", chunk=32)
    # A STaR iteration here is ~25-50 optimiser steps: 1e-4 moves a 135M model in that many (3e-5 moved the judge
    # below its zero-shot accuracy in one iteration; at 1e-4 the reward heads learn, docs/learning.md; the paper's
    # 1e-6 is for 8B models over thousands of steps).
    # max_len: the longest judge prompt plus a judgment (24 tokens, the verdict, EOS). The verifiable pairs are
    # short: with `verify` every training sequence fits the 192-token bucket.
    c.train.update(learning_rate=1e-4, epochs=2, batch_size=8, max_len=352, buckets=(192, 352), checkpoint_every=10)
    if c.get("method") and methods.get(c.method).part in ("star", "self_rationalization"):
        # One pass over an iteration's records: STaR-DPO's loss is ~0 after it, and a second epoch puts a STaR run
        # at ~30 minutes here, past the 20 (docs/learning.md).
        c.train.epochs = 1
    c.engine.max_batch = 32
    c.eval.ks = (1,)
    # Evaluated before training and after the last iteration: an evaluation of 431 pairs in both orders takes 4-5
    # minutes here, a quarter of the 20 for a whole run. No bias stages (a minute each): every evaluation
    # reports position consistency per set, and the length and master-key probes are about chat answers.
    c.eval.update(every_iteration=False, bias=False)
    return c
