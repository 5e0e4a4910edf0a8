"""Records -> tokens, loss masks and bucketed batches: bad input, truncation, determinism, resumable order."""
import json

import numpy as np
import pytest
from chartok import CharTokenizer

from genrm_jax.data import pipeline, sources
from genrm_jax.data.pipeline import DataError, Pipeline

TOK = CharTokenizer()


def _sft(q, target, **kw):
    return {"messages": [{"role": "user", "content": q}], "target": target, **kw}


def _pair(q, c, r, field="messages"):
    return {field: [{"role": "user", "content": q}], "chosen": c, "rejected": r}


def test_missing_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [_sft("hi", "A"), {"messages": [{"role": "user", "content": "x"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = pipeline.read_jsonl(str(path))
    with pytest.raises(DataError, match=rf"{path}:2: missing required field 'target'"):
        Pipeline(records, "sft", TOK, max_len=64, batch_size=1, progress=False)


def test_bad_json_and_bad_turns_are_located(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_sft("a", "A")) + "\n{not json\n")
    with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):
        pipeline.read_jsonl(str(path))
    bad = {"prompt": [{"role": "human", "content": "x"}], "chosen": "a", "rejected": "b", "source": "f.jsonl:7"}
    with pytest.raises(DataError, match=r"f.jsonl:7: field 'prompt'\[0\]"):
        pipeline.validate(bad, "bt")
    with pytest.raises(DataError, match=r"record 3: field 'chosen': expected a string"):
        pipeline.validate(_pair("q", None, "r"), "dpo", index=3)


def test_empty_answer_and_unfittable_example_are_skipped_and_counted():
    records = [_sft("question one", "A"), _sft("question two", "  ", source="x.jsonl:2"),
               _sft("q", "a very long rationale that cannot fit " * 3), _sft("question four", "B")]
    pipe = Pipeline(records, "sft", TOK, max_len=40, buckets=(40,), batch_size=1, progress=False)
    assert pipe.stats.skipped == {"empty_target": 1, "too_long": 1}
    assert pipe.stats.examples == 2 and pipe.stats.records == 4
    assert "x.jsonl:2: empty_target" in pipe.stats.as_dict()["first_skipped"]
    assert "2 of 4 records kept" in pipe.stats.summary()
    with pytest.raises(DataError, match="no usable dpo examples"):
        Pipeline([_pair("q", "", "b")], "dpo", TOK, max_len=40, batch_size=1, progress=False)


def test_truncation_cuts_prefix_from_the_left_and_keeps_the_answer():
    q = "an early sentence that will be cut. " * 4 + "the question at the end?"
    target = "Rationale: fine. Verdict: B"
    ex = pipeline.encode_record(_sft(q, target), "sft", TOK, max_len=64)
    full_prefix = TOK.apply_chat_template([{"role": "user", "content": q}])
    answer = TOK.encode(target) + [TOK.eos_token_id]
    assert len(full_prefix) + len(answer) > 64
    tokens, mask = ex["tokens"][0], ex["loss_mask"][0]
    assert len(tokens) == 64
    assert list(tokens[-len(answer):]) == answer
    assert list(tokens[:-len(answer)]) == full_prefix[-(64 - len(answer)):]  # the tail of the prefix survives
    assert TOK.decode(tokens[mask == 1]) == target  # loss on the target, not EOS, not the prompt
    stats = pipeline.Stats()
    pipeline.encode_record(_sft(q, target), "sft", TOK, max_len=64, stats=stats)
    assert stats.truncated == 1
    assert pipeline.fit_prefix([1, 2, 3], [5], 5) == (None, False)
    assert pipeline.fit_prefix([1, 2, 3], [2], 4) == ([2, 3], True)


def test_pairs_share_one_prefix_and_pairrm_shows_both_orders():
    dpo = pipeline.encode_record(_pair("which?", "short", "a much longer answer"), "dpo", TOK, max_len=30)
    c, r = dpo["tokens"]
    n_prefix = len(c) - int(dpo["loss_mask"][0].sum()) - 1
    assert list(c[:n_prefix]) == list(r[:n_prefix])
    assert TOK.decode(r[dpo["loss_mask"][1] == 1]) == "a much longer answer"
    prm = pipeline.encode_record(_pair("which?", "yes", "no", field="prompt"), "pairrm", TOK, max_len=200)
    a_b, b_a = (TOK.decode(t) for t in prm["tokens"])
    assert a_b.endswith("[Answer A]\nyes\n\n[Answer B]\nno") and b_a.endswith("[Answer A]\nno\n\n[Answer B]\nyes")
    assert list(prm["labels"]) == [1, 0]


def _many(n=40):
    rng = np.random.default_rng(0)
    return [_sft("q" * int(rng.integers(1, 60)), "AB"[i % 2] + str(i)) for i in range(n)]


def test_buckets_batches_and_seeded_epochs():
    pipe = Pipeline(_many(), "sft", TOK, max_len=80, buckets=(32, 80), batch_size=4, seed=1, epochs=2,
                    progress=False)
    batches = list(pipe.iterator())
    assert len(batches) == len(pipe) >= 8
    for b in batches:
        assert b["tokens"].shape[0] == 4 and b["tokens"].shape[1] in (32, 80)
        assert b["tokens"].shape == b["mask"].shape == b["loss_mask"].shape
        assert (b["loss_mask"] <= b["mask"]).all()
    assert {b["tokens"].shape[1] for b in batches} == {32, 80}
    per_epoch = len(pipe) // 2
    first, second = batches[:per_epoch], batches[per_epoch:]
    assert any(not np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(first, second))  # reshuffled
    same = Pipeline(_many(), "sft", TOK, max_len=80, buckets=(32, 80), batch_size=4, seed=1, epochs=2,
                    progress=False)
    assert all(np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(batches, same.iterator()))
    other = Pipeline(_many(), "sft", TOK, max_len=80, buckets=(32, 80), batch_size=4, seed=2, epochs=2,
                     progress=False)
    assert any(not np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(batches, other.iterator()))


def test_a_group_shares_a_batch_and_its_longest_members_bucket():
    # 12 groups of two: the second member is longer, in the 80 bucket when the first fits in 32.
    recs = [_sft(f"q{g}" + "x" * (g % 3), t + "y" * (30 * i * (g % 2)), group=f"g{g}")
            for g in range(12) for i, t in enumerate(("A", "B"))]
    pipe = Pipeline(recs, "sft", TOK, max_len=80, buckets=(32, 80), batch_size=4, seed=3, epochs=3, progress=False)
    assert len(pipe) == 18
    q_of = [r["messages"][0]["content"] for r in recs]
    seen = set()
    for length, idx in pipe.plan:
        groups = [q_of[i] for i in idx]
        assert all(groups.count(q) == 2 for q in groups)  # both members of every group in this batch
        assert length == (80 if int(groups[0][1:].rstrip("x")) % 2 else 32)
        seen.add(tuple(idx))
    assert len(seen) > 6  # reshuffled across epochs, groups kept whole
    ungrouped = Pipeline([{k: v for k, v in r.items() if k != "group"} for r in recs], "sft", TOK, max_len=80,
                         buckets=(32, 80), batch_size=4, seed=3, progress=False)
    assert any(len({q_of[i] for i in idx}) > 2 for _, idx in ungrouped.plan)  # without groups they part


def test_iterator_state_resumes_the_exact_order():
    pipe = Pipeline(_many(), "sft", TOK, max_len=80, batch_size=4, seed=0, progress=False)
    it = pipe.iterator()
    next(it), next(it)
    state = it.get_state()
    expected = next(it)
    fresh = pipe.iterator()
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["tokens"], expected["tokens"])


def test_sequential_batches_and_reference_logprobs():
    records = [_pair(f"q{i}", f"good {i}", f"bad {i}") for i in range(5)]
    pipe = Pipeline(records, "dpo", TOK, max_len=32, buckets=(32,), batch_size=2, progress=False)
    seq = list(pipe.sequential_batches())
    assert [b["n_valid"] for b in seq] == [2, 2, 1] and seq[0]["tokens"].shape == (2, 2, 32)
    with pytest.raises(ValueError, match=r"expected \(5, 2\)"):
        pipe.attach_reference(np.zeros((4, 2)))
    pipe.attach_reference(np.arange(10, dtype=np.float32).reshape(5, 2))
    batch = next(pipe.iterator())
    assert batch["ref_logps"].shape == (2, 2) and batch["ref_logps"].dtype == np.float32


@pytest.mark.slow
def test_real_chat_template_masks_only_the_verdict(smollm):
    tok = smollm.tokenizer
    rec = _sft("Which answer is better, A or B?", "B")
    ex = pipeline.encode_record(rec, "sft", tok, max_len=512)
    tokens, mask = ex["tokens"][0], ex["loss_mask"][0]
    text = tok.decode(tokens.tolist())
    assert text.endswith("<|im_start|>assistant\nB<|im_end|>"), text[-80:]
    assert tok.decode(tokens[mask == 1].tolist()) == "B"  # Eq. 7: the verdict token only
    assert tokens[-1] == tok.eos_token_id


def test_answers_follow_the_rule_sources_apply():
    """One rule for training and evaluation (sources.answer_problem): empty or whitespace answers and identical
    answers are skipped, counted by the field they concern."""
    records = [_pair("q1", "good", "bad"), _pair("q2", " \n", "bad"), _pair("q3", "good", ""),
               _pair("q4", "same", "same "), _pair("q5", "fine", "worse")]
    pipe = Pipeline(records, "dpo", TOK, max_len=40, buckets=(40,), batch_size=1, progress=False)
    assert pipe.stats.skipped == {"empty_chosen": 1, "empty_rejected": 1, "identical_answers": 1}
    assert pipe.stats.examples == 2
    for rec in records:
        reason = sources.answer_problem({"chosen": rec["chosen"], "rejected": rec["rejected"]})
        stats = pipeline.Stats()
        ex = pipeline.encode_record(rec, "ipo", TOK, max_len=40, stats=stats)
        assert (ex is None) == (reason is not None) and list(stats.skipped) == ([reason[0]] if reason else [])


def test_read_jsonl_locates_a_byte_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(_sft("a", "A")).encode() + b"\n" + b'{"messages": [], "target": "\xe9"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: not valid UTF-8 \(byte 0xe9 at column 29\)"):
        pipeline.read_jsonl(str(path))


def test_process_rows_split_every_batch_into_its_pieces():
    """Two processes loading rows [0, 2) and [2, 4) of each batch hold the whole batch once between them, in the
    same length bucket at every step; a piece with no real row is a stand-in that counts for nothing."""
    records = [_pair(f"q{i}", f"good {i}", f"bad answer {i}") for i in range(6)]  # 6 = a batch of 4 + 2
    kw = dict(max_len=48, buckets=(48,), batch_size=4, drop_remainder=False, progress=False)
    whole = list(Pipeline(records, "dpo", TOK, **kw).iterator())
    parts = [list(Pipeline(records, "dpo", TOK, rows=rows, **kw).iterator()) for rows in ((0, 2), (2, 4))]
    for step, batch in enumerate(whole):
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), batch[key], err_msg=key)
    short = [p[step] for p in parts for step in range(len(whole)) if p[step]["valid"].sum() == 0]
    assert len(short) == 1 and short[0]["loss_mask"].sum() == 0 and short[0]["tokens"].shape[0] == 2
    with pytest.raises(ValueError, match=r"rows \(2, 6\) of a batch of 4"):
        Pipeline(records, "dpo", TOK, rows=(2, 6), **kw)
