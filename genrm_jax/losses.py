"""The paper's training objectives as pure functions of model outputs and a batch.

Every loss returns `Loss(value, weight, metrics)`. `value` is a mean over `weight` units — target tokens for
SFT, pairs for DPO/IPO/BT, ordered presentations for PairRM — so that the train step can weight each
micro-batch by its share of the units and make gradient accumulation equal one large batch exactly, even when
micro-batches hold different numbers of target tokens.

SFT is one loss for both GenRM objectives: Eq. 7 (verdict token only) and Eq. 8 (rationale + verdict) differ
only in the loss mask the pipeline builds.

DPO reference log-probs are precomputed once per dataset (`reference_logprobs`, one forward pass without
gradients, stored in each example as `ref_logps`), not recomputed in every step from a frozen copy. The
reference never changes during a STaR iteration, so per-step recomputation would add a forward pass to every
step of every epoch and keep a second full copy of the weights resident next to the policy, its gradients and
AdamW's two moments; precomputing costs about a third of one epoch, once, and leaves the DPO step with the
memory and speed of an SFT step on twice the sequences. The values are identical either way: the reference is
frozen.

Model-level objectives run the forward pass and feed these functions; trainable params are always
`{"model": llama params, "head": reward head (BT and PairRM only)}`. Each is registered by name (Tunix's
`@register_policy_loss_fn` is the model): a new loss is one pure function above plus one
`@register_loss(name, ...)` objective below, and `make_loss_fn(name, ...)`, finetune, the pipeline's record kind,
the planner and the method registry (genrm_jax/methods.py) all read its `LossSpec`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

from tqdm.auto import tqdm

import jax
import jax.numpy as jnp
import numpy as np

from genrm_jax.models import heads, llama

class Loss(NamedTuple):
    value: jax.Array  # scalar mean over `weight` units
    weight: jax.Array  # how many units the mean is over (tokens or pairs)
    metrics: dict  # scalars, each a mean over the same units


# ------------------------------------------------------------------------------------------ log-probs


def token_logprobs(logits, tokens):
    """[B, T] log p(tokens[:, t] | tokens[:, <t]); position 0 has no context and gets 0.

    logsumexp minus the picked logit: XLA fuses it, so no [B, T, V] log-softmax is materialised. Every
    position predicts the next token (the last one a dummy, dropped afterwards): shifting the [B, T] result
    instead of slicing the [B, T, V] logits saves a copy of the logits and of their gradient.
    """
    logits = logits.astype(jnp.float32)
    following = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
    picked = jnp.take_along_axis(logits, following[:, :, None], axis=-1)[..., 0]
    lp = picked - jax.nn.logsumexp(logits, axis=-1)
    return jnp.pad(lp[:, :-1], ((0, 0), (1, 0)))


def sequence_logprobs(logits, tokens, loss_mask):
    """[B] summed log-prob of the tokens selected by loss_mask (the completion)."""
    return jnp.sum(token_logprobs(logits, tokens) * loss_mask.astype(jnp.float32), axis=-1)


# ------------------------------------------------------------------------------------- pure losses


def sft(logits, tokens, loss_mask) -> Loss:
    """Token-level cross-entropy on the masked tokens (Eq. 7 / Eq. 8)."""
    hit = jnp.argmax(logits, axis=-1)[:, :-1] == tokens[:, 1:]
    return sft_scored(token_logprobs(logits, tokens), jnp.pad(hit, ((0, 0), (1, 0))), loss_mask)


def sft_scored(logprobs, hits, weights) -> Loss:
    """`sft` from the scored tokens' log-probs, whether each was the most likely token, and 0/1 weights (all
    [B, K]): what `scored_logprobs` reads at a batch's scored positions only."""
    m = weights.astype(jnp.float32)
    n = jnp.sum(m)
    denom = jnp.maximum(n, 1.0)
    loss = -jnp.sum(logprobs * m) / denom
    acc = jnp.sum(hits.astype(jnp.float32) * m) / denom
    return Loss(loss, n, {"loss": loss, "token_accuracy": acc})


def _wmean(x, w):
    """Mean of x over the rows that count (w = 1 real, 0 batch padding); w None: all rows count."""
    if w is None:
        return jnp.mean(x)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def _units(x, w):
    return jnp.asarray(x.shape[0], jnp.float32) if w is None else jnp.sum(w)


def _preference_metrics(loss, h, chosen_logp, rejected_logp, chosen_reward, rejected_reward, w=None):
    return {
        "loss": loss,
        "accuracy": _wmean((h > 0).astype(jnp.float32), w),  # implicit-reward accuracy; ties count as wrong
        "margin": _wmean(chosen_reward - rejected_reward, w),
        "chosen_logp": _wmean(chosen_logp, w),
        "rejected_logp": _wmean(rejected_logp, w),
        "chosen_reward": _wmean(chosen_reward, w),
        "rejected_reward": _wmean(rejected_reward, w),
    }


def dpo(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta: float = 1.0, weights=None) -> Loss:
    """Eq. 9: -log σ(β[(log π_c - log ref_c) - (log π_r - log ref_r)]) on summed completion log-probs.

    `weights` [B] (1 = a real pair, 0 = batch padding) makes padded rows count for nothing; None = all count."""
    rc = beta * (chosen_logp - ref_chosen_logp)
    rr = beta * (rejected_logp - ref_rejected_logp)
    h = rc - rr
    loss = -_wmean(jax.nn.log_sigmoid(h), weights)
    return Loss(loss, _units(h, weights), _preference_metrics(loss, h, chosen_logp, rejected_logp, rc, rr, weights))


def ipo(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta: float = 0.4, weights=None) -> Loss:
    """IPO (Azar et al.): (h - 1/(2β))² with h the difference of log-ratios; β = τ = 0.4 for the Rationalizer."""
    rc = chosen_logp - ref_chosen_logp
    rr = rejected_logp - ref_rejected_logp
    h = rc - rr
    loss = _wmean((h - 1.0 / (2.0 * beta)) ** 2, weights)
    return Loss(loss, _units(h, weights), _preference_metrics(loss, h, chosen_logp, rejected_logp, rc, rr, weights))


def bradley_terry(chosen_reward, rejected_reward, weights=None) -> Loss:
    """Eq. 2: -log σ(r_c - r_r)."""
    d = chosen_reward - rejected_reward
    loss = -_wmean(jax.nn.log_sigmoid(d), weights)
    metrics = {"loss": loss, "accuracy": _wmean((d > 0).astype(jnp.float32), weights), "margin": _wmean(d, weights),
               "mean_reward": _wmean(0.5 * (chosen_reward + rejected_reward), weights)}
    return Loss(loss, _units(d, weights), metrics)


def pairrm(scores, labels, weights=None) -> Loss:
    """Binary cross-entropy of σ(score) = P(first answer better) against labels (1 = first is better)."""
    s = scores.astype(jnp.float32)
    y = labels.astype(jnp.float32)
    # -[y log σ(s) + (1-y) log σ(-s)], written with log_sigmoid for stability
    loss = -_wmean(y * jax.nn.log_sigmoid(s) + (1 - y) * jax.nn.log_sigmoid(-s), weights)
    acc = _wmean(((s > 0) == (y > 0.5)).astype(jnp.float32), weights)
    return Loss(loss, _units(s, weights),
                {"loss": loss, "accuracy": acc, "mean_prob_first": _wmean(jax.nn.sigmoid(s), weights)})


# ------------------------------------------------------------------------------- model objectives


def _flat_pairs(batch):
    """[B, 2, L] pair arrays -> [2B, L] with all chosen rows first (one forward for both sides)."""
    def flat(x):
        return jnp.concatenate([x[:, 0], x[:, 1]], axis=0)
    return flat(batch["tokens"]), flat(batch["mask"])


PAIR_FIELDS = ("tokens", "mask", "loss_mask", "segment_ids", "positions", "src",  # what pair_logprobs reads
               "score_index", "score_weight", "score_side")


def pair_arrays(batch) -> dict:
    """The fields of a pair batch (packed or not) that `pair_logprobs` reads."""
    return {k: batch[k] for k in PAIR_FIELDS if k in batch}


def scored_logprobs(model_params, batch, config: llama.LlamaConfig, **forward_kw):
    """log p and whether it was the argmax, [B, K], of the tokens at `batch["score_index"]` (data.pipeline), read
    from the final hidden states at the positions that predict them (`batch["src"]` of a packed pair, else the
    previous position). The LM head and its log-softmax run on those K positions per row, not all L: a
    verdict-only SFT step scores one token in ~200, and the head is ~20% of a 135M model's FLOPs."""
    out = llama.forward(model_params, batch["tokens"], config, logits=False, return_hidden=True, **forward_kw)
    index = batch["score_index"]
    src = jnp.take_along_axis(batch["src"], index, axis=1) if "src" in batch else jnp.maximum(index - 1, 0)
    hidden = jnp.take_along_axis(out.hidden, src[:, :, None], axis=1)
    logits = llama.unembed(model_params, hidden, config).astype(jnp.float32)
    target = jnp.take_along_axis(batch["tokens"], index, axis=1)
    picked = jnp.take_along_axis(logits, target[:, :, None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1), jnp.argmax(logits, axis=-1) == target


def pair_logprobs(model_params, batch, config: llama.LlamaConfig):
    """[B, 2] summed completion log-probs of (chosen, rejected) under `model_params`.

    A packed batch (data.pipeline, `packed=True`: one row [prompt | chosen | rejected] per pair, with
    `segment_ids`, `positions`, `src` and the scored positions `score_*`) runs the prompt once and the LM head on
    the completions' tokens only (`scored_logprobs`); otherwise the [B, 2, L] rows run as 2B sequences.
    """
    if "segment_ids" in batch:
        lp, _ = scored_logprobs(model_params, batch, config, positions=batch["positions"],
                                segment_ids=batch["segment_ids"], shared_prefix=True)
        w, side = batch["score_weight"].astype(jnp.float32), batch["score_side"].astype(jnp.float32)
        return jnp.stack([jnp.sum(lp * w * (1.0 - side), axis=-1), jnp.sum(lp * w * side, axis=-1)], axis=1)
    tokens, mask = _flat_pairs(batch)
    loss_mask = jnp.concatenate([batch["loss_mask"][:, 0], batch["loss_mask"][:, 1]], axis=0)
    logits = llama.forward(model_params, tokens, config, attention_mask=mask).logits
    lp = sequence_logprobs(logits, tokens, loss_mask)
    b = batch["tokens"].shape[0]
    return jnp.stack([lp[:b], lp[b:]], axis=1)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What the rest of the library needs to know about a loss."""
    name: str
    make: Callable  # (llama config, beta) -> (params, batch, rng) -> Loss
    pairs: bool     # batches of (chosen, rejected) pairs: both sides go through one forward (twice the rows)
    head: bool      # trains a scalar reward head on the last hidden state (no logits)
    reference: bool  # needs the frozen reference's log-probs (finetune precomputes them once per dataset)
    beta: float | None  # the default beta (None: the loss has none)
    record: str     # the training records' shape (data/pipeline.REQUIRED_FIELDS): sft, dpo (pairs of completions
                    # of one prompt), bt (pairs of answers to a conversation) or pairrm (both in one sequence)


LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, *, pairs: bool, head: bool = False, reference: bool = False,
                  beta: float | None = None, record: str | None = None):
    """Decorator registering `make(config, beta) -> (params, batch, rng) -> Loss` as loss `name`, trained on
    records of shape `record` (default: by `pairs` and `head`: sft, dpo or bt)."""
    record = record or ("sft" if not pairs else "bt" if head else "dpo")

    def deco(make):
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        LOSSES[name] = LossSpec(name, make, pairs, head, reference, beta, record)
        return make
    return deco


def spec(kind: str) -> LossSpec:
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; expected one of {tuple(LOSSES)}")
    return LOSSES[kind]


def make_loss_fn(kind: str, config: llama.LlamaConfig, *, beta: float | None = None
                 ) -> Callable[[dict, dict, jax.Array], Loss]:
    """`(params, batch, rng) -> Loss` for a registered loss; `config` carries compute dtype and remat."""
    s = spec(kind)
    return s.make(config, s.beta if beta is None else beta)


@register_loss("sft", pairs=False)
def _sft_objective(config, beta):
    def fn(params, batch, rng):
        if "score_index" in batch:  # a pipeline batch: the LM head on the scored positions only
            lp, hits = scored_logprobs(params["model"], batch, config, attention_mask=batch["mask"])
            return sft_scored(lp, hits, batch["score_weight"])
        logits = llama.forward(params["model"], batch["tokens"], config, attention_mask=batch["mask"]).logits
        return sft(logits, batch["tokens"], batch["loss_mask"])
    return fn


def _preference_objective(pref):
    def make(config, beta):
        def fn(params, batch, rng):
            lp = pair_logprobs(params["model"], batch, config)
            ref = batch["ref_logps"]
            return pref(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], beta=beta, weights=batch.get("valid"))
        return fn
    return make


register_loss("dpo", pairs=True, reference=True, beta=1.0)(_preference_objective(dpo))
register_loss("ipo", pairs=True, reference=True, beta=0.4)(_preference_objective(ipo))


def _rewards(params, batch, config):
    tokens, mask = _flat_pairs(batch)
    r = heads.scalar_reward(params["model"], params["head"], tokens, mask, config)
    return r, batch["tokens"].shape[0], batch.get("valid")


@register_loss("bt", pairs=True, head=True)
def _bt_objective(config, beta):
    def fn(params, batch, rng):
        r, n, valid = _rewards(params, batch, config)
        return bradley_terry(r[:n], r[n:], weights=valid)
    return fn


@register_loss("pairrm", pairs=True, head=True, record="pairrm")
def _pairrm_objective(config, beta):
    def fn(params, batch, rng):
        r, n, valid = _rewards(params, batch, config)
        labels = jnp.concatenate([batch["labels"][:, 0], batch["labels"][:, 1]], axis=0)
        return pairrm(r, labels, weights=None if valid is None else jnp.concatenate([valid, valid]))
    return fn


KINDS = tuple(LOSSES)  # the registered losses' names (read after every registration above)


def reference_logprobs(model_params, config: llama.LlamaConfig, batches, *, progress: bool = True):
    """Summed completion log-probs [N, 2] of the frozen reference over `batches` (an iterable of pair batches,
    each possibly carrying `n_valid` real rows at the front). One pass, no gradients."""
    fn = jax.jit(lambda p, b: pair_logprobs(p, b, config))
    out = []
    for batch in tqdm(batches, desc="reference log-probs", disable=not progress):
        n = int(batch.get("n_valid", batch["tokens"].shape[0]))
        out.append(np.asarray(fn(model_params, pair_arrays(batch)))[:n])
    return np.concatenate(out, axis=0) if out else np.zeros((0, 2), np.float32)
