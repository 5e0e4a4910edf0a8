import gzip
import json

import pytest

from genrm_jax.data import sources, splits

HH_ROWS = {"harmless-base": 2312, "helpful-base": 2354, "helpful-online": 1137, "helpful-rejection-sampled": 2749}


def _write(tmp_path, rows, name="data.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(p)


def _check_record(r):
    assert set(r) == {"id", "prompt", "chosen", "rejected", "subset", "category", "source"}
    assert isinstance(r["id"], str) and isinstance(r["chosen"], str) and isinstance(r["rejected"], str)
    assert r["prompt"] and r["prompt"][-1]["role"] == "user"
    assert all(t["role"] in sources.ROLES and isinstance(t["content"], str) for t in r["prompt"])


def test_rewardbench_all_rows():
    recs = sources.load("rewardbench", sources.REWARDBENCH)
    assert len(recs) == 2985
    counts = {}
    for r in recs:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    assert counts == {"Chat": 358, "Chat Hard": 456, "Safety": 740, "Reasoning": 1431}
    assert sum(r["subset"] == "math-prm" for r in recs) == 447
    _check_record(recs[0])
    assert recs[0]["source"].endswith("filtered.jsonl.gz:1")
    assert len(sources.load("rewardbench", sources.REWARDBENCH, limit=7)) == 7


def test_hh_rlhf_all_rows_read_and_split():
    total, skipped = 0, []
    for split, n in HH_ROWS.items():
        out = sources.read("hh-rlhf", sources.hh_rlhf_path(split))
        assert out.rows == n == len(out.records) + len(out.skipped)
        total += out.rows
        skipped += out.skipped
        for r in out.records[:50]:
            _check_record(r)
            assert r["subset"] == split and r["chosen"] != r["rejected"]
    assert total == 8552
    # Every row shares a prefix that ends before an Assistant turn; the skipped ones are exact duplicates.
    # A few answers are empty: skipped by the rule every format shares.
    no_prefix = [s for s in skipped if "share no prefix" in s.reason]
    identical = [s for s in skipped if "identical" in s.reason]
    empty = [s for s in skipped if "is empty" in s.reason]
    print(f"\nHH-RLHF: {total} rows; {len(no_prefix)} without a shared prefix; {len(identical)} identical answers at "
          + ", ".join(s.source.split("hh-rlhf/")[1] for s in identical) + f"; {len(empty)} empty answers")
    assert len(no_prefix) == 0 and len(identical) == 36 and len(empty) == 11
    assert len(identical) + len(empty) == len(skipped)
    assert all(s.source.rsplit(":", 1)[1].isdigit() for s in skipped)


def test_hh_split_multi_turn():
    c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: a joke?\n\nAssistant: Why did the chicken..."
    r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: a joke?\n\nAssistant: No."
    prompt, a, b = sources.hh_split(c, r)
    assert prompt == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                      {"role": "user", "content": "a joke?"}]
    assert (a, b) == ("Why did the chicken...", "No.")


def test_hh_split_answers_that_continue_the_dialogue():
    # The rejected answer hallucinates a further Human turn: it stays part of that answer.
    c = "\n\nHuman: hi\n\nAssistant: Hello!"
    r = "\n\nHuman: hi\n\nAssistant: Hey.\n\nHuman: bye\n\nAssistant: Bye."
    prompt, a, b = sources.hh_split(c, r)
    assert prompt == [{"role": "user", "content": "hi"}]
    assert a == "Hello!" and b == "Hey.\n\nHuman: bye\n\nAssistant: Bye."


def test_hh_split_rejects_no_prefix_and_duplicates():
    with pytest.raises(ValueError, match="share no prefix"):
        sources.hh_split("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: x")
    with pytest.raises(ValueError, match="identical"):
        sources.hh_split("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: a\n\nAssistant: x ")


def test_hh_rows_without_prefix_are_reported_by_line(tmp_path, caplog):
    d = tmp_path / "helpful-base"
    d.mkdir()
    good = {"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: q\n\nAssistant: no"}
    bad = {"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: other\n\nAssistant: no"}
    p = _write(d, [good, bad, good], "test.jsonl")
    out = sources.read("hh-rlhf", p)
    assert [s.source for s in out.skipped] == [f"{p}:2"] and len(out.records) == 2 and out.rows == 3
    assert out.records[0]["category"] == "helpful" and out.records[1]["id"] == "helpful-base-3"
    with caplog.at_level("WARNING"):
        assert len(sources.load("hh-rlhf", p)) == 2
    assert "lines 2" in caplog.text


def test_generic_jsonl(tmp_path):
    p = _write(tmp_path, [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
         "chosen": "hi", "rejected": "go away", "subset": "s1", "category": "c1", "id": 17},
        "",  # blank line: ignored
    ])
    a, b = sources.load("jsonl", p)
    assert a["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
    assert (a["id"], a["subset"], a["category"], a["source"]) == ("1", "default", "default", f"{p}:1")
    assert (b["id"], b["subset"], b["category"]) == ("17", "s1", "c1")
    _check_record(a), _check_record(b)


@pytest.mark.parametrize("row,message", [
    ({"chosen": "a", "rejected": "b"}, r":1: field 'prompt' is missing"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, r":1: field 'chosen' must be str, got int"),
    ({"prompt": [], "chosen": "a", "rejected": "b"}, r":1: field 'prompt' has no turns"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, r"must end with a user turn"),
    ({"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}, r"prompt\[0\].role"),
    ({"prompt": [{"role": "user", "content": None}], "chosen": "a", "rejected": "b"}, r"prompt\[0\].content"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "subset": 4}, r"field 'subset' must be str"),
    ([1, 2], r":1: expected a JSON object, got list"),
])
def test_bad_generic_rows(tmp_path, row, message):
    p = _write(tmp_path, [row])
    with pytest.raises(sources.DataError, match=message):
        sources.load("jsonl", p)


def test_bad_files(tmp_path):
    p = _write(tmp_path, ['{"prompt": "q", "chosen": "a", "rejected": "b"}', '{"prompt": "q",'])
    with pytest.raises(sources.DataError, match=r"data.jsonl:2: invalid JSON"):
        sources.load("jsonl", p)
    with pytest.raises(sources.DataError, match="no such file"):
        sources.load("jsonl", str(tmp_path / "missing.jsonl"))
    with pytest.raises(sources.DataError, match="unknown format 'csv'"):
        sources.load("csv", p)
    with pytest.raises(sources.DataError, match="field 'id' is missing"):
        sources.load("rewardbench", _write(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b",
                                                       "subset": "x"}], "rb.jsonl"))
    with pytest.raises(sources.DataError, match="unknown HH-RLHF split"):
        sources.hh_rlhf_path("helpful")


def test_ultrafeedback_binarized(tmp_path):
    row = {"prompt": "Name a colour.", "prompt_id": "abc",
           "chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
           "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Dog."}],
           "score_chosen": 8.0, "score_rejected": 2.0}
    p = str(tmp_path / "uf.jsonl.gz")
    with gzip.open(p, "wt") as f:
        f.write(json.dumps(row) + "\n")
    (r,) = sources.load("ultrafeedback", p)
    assert (r["id"], r["chosen"], r["rejected"]) == ("abc", "Blue.", "Dog.")
    assert r["prompt"] == [{"role": "user", "content": "Name a colour."}]
    bad = dict(row, rejected=[{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "Dog."}])
    with pytest.raises(sources.DataError, match="answer different conversations"):
        sources.load("ultrafeedback", _write(tmp_path, [bad]))
    bad = dict(row, chosen=[{"role": "user", "content": "Name a colour."}])
    with pytest.raises(sources.DataError, match="'chosen' must end with the assistant's answer"):
        sources.load("ultrafeedback", _write(tmp_path, [bad], "b2.jsonl"))


def test_ultrainteract_pair_json_array(tmp_path):
    rows = [{"task": "Math_CoT", "dataset": "gsm8k", "id": "q1_1", "parent_id": "q1",
             "trajectory": [{"from": "user", "value": "2+2?"}, {"from": "assistant", "value": "Step 1: 5"},
                            {"from": "user", "value": "Your answer is wrong."}],
             "chosen": "Step 1: 4", "rejected": "Step 1: 22"}]
    p = tmp_path / "ui.json"
    p.write_text(json.dumps(rows))
    (r,) = sources.load("ultrainteract", str(p))
    assert (r["id"], r["subset"], r["category"]) == ("q1_1", "gsm8k", "Math_CoT")
    assert [t["role"] for t in r["prompt"]] == ["user", "assistant", "user"]
    rows[0]["trajectory"][0]["from"] = "narrator"
    p.write_text(json.dumps(rows))
    with pytest.raises(sources.DataError, match=r"ui.json:1: field trajectory\[0\].from"):
        sources.load("ultrainteract", str(p))


def test_splits_deterministic_and_balanced():
    recs = sources.load("rewardbench", sources.REWARDBENCH)
    train, held = splits.train_held_out(recs, 0.1, seed=3)
    assert len(train) + len(held) == len(recs) and 200 < len(held) < 400
    # A record's side depends on its id only, not on what else was loaded.
    _, held_sub = splits.train_held_out(recs[::-1][:1000], 0.1, seed=3)
    assert {r["id"] for r in held_sub} <= {r["id"] for r in held}
    a = splits.a_is_chosen(recs, seed=0)
    assert a.dtype == bool and abs(int(a.sum()) - len(recs) / 2) <= 23 / 2 + 1
    for subset in {r["subset"] for r in recs}:
        m = [i for i, r in enumerate(recs) if r["subset"] == subset]
        assert abs(int(a[m].sum()) * 2 - len(m)) <= 1
    assert (splits.a_is_chosen(recs, seed=0) == a).all() and not (splits.a_is_chosen(recs, seed=1) == a).all()
    sample = splits.stratified_sample(recs, 5, seed=0)
    assert len(sample) == 23 * 5 and sample == splits.stratified_sample(recs, 5, seed=0)


# ------------------------------------------------------------------------------------ empty files, bad bytes


def test_a_file_without_records_is_an_error_naming_it(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(sources.DataError, match=rf"{empty}: no records \(the file holds no rows\)"):
        sources.load("jsonl", str(empty))
    blank = _write(tmp_path, ["", "  "], "blank.jsonl")
    with pytest.raises(sources.DataError, match=r"blank.jsonl: no records"):
        sources.read("jsonl", blank)
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(sources.DataError, match=r"empty.json: no records"):
        sources.load("ultrainteract", str(tmp_path / "empty.json"))
    skipped = _write(tmp_path, [{"prompt": "q", "chosen": "", "rejected": "b"},
                                {"prompt": "q", "chosen": "a", "rejected": "a"}], "skipped.jsonl")
    with pytest.raises(sources.DataError, match=r"skipped.jsonl: no records: all 2 rows skipped \(field 'chosen' is "
                                                r"empty or only whitespace \(lines 1\); fields 'chosen' and "
                                                r"'rejected' are identical \(lines 2\)\)"):
        sources.load("jsonl", skipped)
    assert sources.load("jsonl", str(empty), limit=0) == []  # asked for none


def _pair_row(fmt, chosen, rejected):
    if fmt == "jsonl":
        return {"prompt": "q", "chosen": chosen, "rejected": rejected}
    if fmt == "rewardbench":
        return {"id": f"{chosen}|{rejected}", "prompt": "q", "chosen": chosen, "rejected": rejected, "subset": "s"}
    if fmt == "ultrafeedback":
        return {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": chosen}],
                "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": rejected}]}
    if fmt == "ultrainteract":
        return {"trajectory": [{"from": "user", "value": "q"}], "chosen": chosen, "rejected": rejected}
    if fmt == "preference-collection":
        return {"orig_instruction": "q", "orig_response_A": rejected, "orig_response_B": chosen,
                "orig_preference": "B", "orig_criteria": "c", **{f"orig_score{i}_description": "d" for i in range(1, 6)}}
    return {"chosen": "\n\nHuman: q\n\nAssistant: " + chosen, "rejected": "\n\nHuman: q\n\nAssistant: " + rejected}


@pytest.mark.parametrize("fmt", [f for f in sources.FORMATS if f not in sources.POINTWISE_FORMATS])
def test_empty_and_identical_answers_are_skipped_alike_in_every_format(tmp_path, fmt, caplog):
    rows = [_pair_row(fmt, "yes", "no"), _pair_row(fmt, "", "no"), _pair_row(fmt, "yes", " \n "),
            _pair_row(fmt, "same", "same"), _pair_row(fmt, "fine", "also fine")]
    d = tmp_path / "helpful-base"
    d.mkdir()
    p = _write(d, rows)
    out = sources.read(fmt, p)
    assert [r["source"] for r in out.records] == [f"{p}:1", f"{p}:5"] and out.rows == 5
    assert [(s.source, s.reason) for s in out.skipped] == [
        (f"{p}:2", "field 'chosen' is empty or only whitespace"),
        (f"{p}:3", "field 'rejected' is empty or only whitespace"),
        (f"{p}:4", "fields 'chosen' and 'rejected' are identical")]
    with caplog.at_level("WARNING"):
        assert len(sources.load(fmt, p)) == 2
    assert ("skipped 3 of 5 rows: field 'chosen' is empty or only whitespace (lines 2); field 'rejected' is empty "
            "or only whitespace (lines 3); fields 'chosen' and 'rejected' are identical (lines 4)") in caplog.text


def test_answer_rule():
    assert sources.answer_problem({"chosen": "a", "rejected": "b"}) is None
    assert sources.answer_problem({"chosen": "\t", "rejected": "b"}) == (
        "empty_chosen", "field 'chosen' is empty or only whitespace")
    assert sources.answer_problem({"chosen": "a", "rejected": ""})[0] == "empty_rejected"
    assert sources.answer_problem({"chosen": "a ", "rejected": "\na"})[0] == "identical_answers"
    assert sources.answer_problem({"target": "A"}) is None
    assert sources.answer_problem({"target": ""})[0] == "empty_target"


def _bytes_file(tmp_path, name, data: bytes):
    p = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(p, "wb") as f:
            f.write(data)
    else:
        p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.jsonl.gz"])
def test_non_utf8_byte_is_located(tmp_path, name):
    good = json.dumps({"prompt": "q", "chosen": "caf\u00e9", "rejected": "b"}, ensure_ascii=False).encode()
    bad = b'{"prompt": "q", "chosen": "caf\xe9", "rejected": "b"}'  # latin-1
    p = _bytes_file(tmp_path, name, good + b"\n" + bad + b"\n")
    with pytest.raises(sources.DataError, match=rf"{name}:2: not valid UTF-8 \(byte 0xe9 at column 31\)"):
        sources.load("jsonl", p)
    with pytest.raises(sources.DataError, match=rf"{name}:2: not valid UTF-8"):
        list(sources.iter_rows(p))


def test_non_utf8_byte_in_json_array_is_located(tmp_path):
    data = (b'[{"prompt": "q", "chosen": "\xc3\xa9", "rejected": "b"},\n'
            b' {"prompt": "\xff", "chosen": "a", "rejected": "b"}]')
    p = _bytes_file(tmp_path, "bad.json", data)
    with pytest.raises(sources.DataError, match=r"bad.json:2: not valid UTF-8 \(byte 0xff at column 14\)"):
        sources.load("jsonl", p)
