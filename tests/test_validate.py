import pandas as pd
import pytest

from sftdpo.io import read_json, read_parquet, write_parquet
from sftdpo.validate import QualityGateError, check_gates, check_rows, statistics, validate

GOOD = dict(task="arithmetic", difficulty="1", expert="program", correct=True, meta="{}")


def row(i, prompt, completion, answer, **over):
    return {"id": f"r{i}", "prompt": prompt, "completion": completion, "answer": answer, **GOOD, **over}


def frame():
    return pd.DataFrame(
        [
            row(0, "What is 1+2?", "1+2=3\n#### 3", "3"),
            row(1, "What is 2+2?", "2+2=5\n#### 5", "4"),  # verifier: wrong answer
            row(2, "What is 3+2?", "3+2=6\n#### 5", "5"),  # verifier: invalid step
            row(3, "What is 1+2?", "1+2=3\n#### 3", "3"),  # duplicate prompt of r0
            row(0, "What is 4+2?", "4+2=6\n#### 6", "6"),  # duplicate id of r0
            row(5, "   ", "1+1=2\n#### 2", "2"),  # empty prompt
            row(6, "What is 5+2?", "5+2=7\n#### 7", "7", difficulty=2),  # wrong type
            row(7, "What is 6+2?", "6+2=8\n" * 50 + "#### 8", "8"),  # too long
            row(8, "What is 7+2?", "7+2=9\n#### 9", "9"),
        ]
    )


def checked():
    return check_rows(frame(), source="demos.parquet", task_options={}, max_prompt_chars=100, max_completion_chars=200)


def test_each_rule_rejects_with_reason_and_field():
    result = checked()
    expected = [
        (None, None),
        ("verifier:wrong_answer", "completion"),
        ("verifier:invalid_step", "completion"),
        ("duplicate_prompt", "prompt"),
        ("duplicate_id", "id"),
        ("empty", "prompt"),
        ("wrong_type:int", "difficulty"),
        ("too_long:>200", "completion"),
        (None, None),
    ]
    got = [
        (r if isinstance(r, str) else None, f if isinstance(f, str) else None)
        for r, f in zip(result["reason"], result["field"])
    ]
    assert got == expected


def test_missing_column_names_file_and_column():
    with pytest.raises(ValueError, match=r"demos.parquet: missing required column\(s\) \['answer'\]"):
        check_rows(
            frame().drop(columns=["answer"]),
            source="demos.parquet",
            task_options={},
            max_prompt_chars=100,
            max_completion_chars=200,
        )


def test_gates_name_the_gate_and_numbers():
    stats = statistics(checked())
    assert stats["n_rows"] == 9 and stats["n_kept"] == 2 and stats["n_rejected"] == 7
    failed = check_gates(stats, {"max_rejected_fraction": 0.5, "min_rows": 3, "min_rows_per_difficulty": 5})
    assert any("max_rejected_fraction: 7/9 rows rejected (77.8%) > 50.0%" in f for f in failed)
    assert any("min_rows: 2 rows kept < 3" in f for f in failed)
    assert any("difficulty '1' has 2 rows < 5" in f for f in failed)
    assert check_gates(stats, {"max_rejected_fraction": 0.8, "min_rows": 2, "min_rows_per_difficulty": 2}) == []


def test_validate_writes_kept_rejected_report_and_plots(tmp_path):
    demos = tmp_path / "demos.parquet"
    write_parquet(frame().drop(index=6), demos)  # parquet columns have one type: no wrong-type row here
    plots = {k: str(tmp_path / f"{k}.png") for k in ("difficulty", "lengths", "rejections")}
    kwargs = dict(
        demos_path=str(demos),
        validated_path=str(tmp_path / "ok.parquet"),
        rejected_path=str(tmp_path / "rej.parquet"),
        report_path=str(tmp_path / "v.json"),
        plot_paths=plots,
        task_options={},
        max_prompt_chars=100,
        max_completion_chars=200,
    )
    validate(**kwargs, gates={"max_rejected_fraction": 0.9, "min_rows": 1, "min_rows_per_difficulty": 1})
    assert read_parquet(tmp_path / "ok.parquet")["id"].tolist() == ["r0", "r8"]
    rejected = read_parquet(tmp_path / "rej.parquet")
    assert len(rejected) == 6 and rejected["reason"].notna().all()
    report = read_json(tmp_path / "v.json")
    assert report["rejections_by_reason"]["duplicate_prompt"] == 1
    assert all((tmp_path / f"{k}.png").read_bytes()[:4] == b"\x89PNG" for k in plots)
    with pytest.raises(QualityGateError, match="gate max_rejected_fraction"):
        validate(**kwargs, gates={"max_rejected_fraction": 0.1, "min_rows": 1, "min_rows_per_difficulty": 1})


def test_the_arrow_scan_flags_every_text_python_calls_blank():
    """`_integrity_suspects` finds blank texts with Arrow's regex (RE2): it must flag every string `str.isspace`
    accepts, or a blank prompt would pass integrity unseen."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from sftdpo.validate import BLANK

    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    assert len(spaces) == 29  # CPython 3.11's whitespace
    texts = ["", *spaces, "".join(spaces), " \t\u3000 "]
    assert pc.match_substring_regex(pa.array(texts), BLANK).to_pylist() == [True] * len(texts)
    assert not any(pc.match_substring_regex(pa.array([" a", "x", "\u200b", "1 "]), BLANK).to_pylist())
    # and through check_rows: a prompt of each whitespace character is rejected as empty
    rows = pd.DataFrame([row(i, s * 2, "1+2=3\n#### 3", "3") for i, s in enumerate(spaces)])
    assert rows["prompt"].dtype == "str"  # an Arrow-backed text column: the Arrow scan, not the Python one
    result = check_rows(rows, source="demos.parquet", task_options={}, max_prompt_chars=100, max_completion_chars=200)
    assert result["reason"].tolist() == ["empty"] * len(spaces)


def test_verifier_processes_give_the_rows_one_process_gives(monkeypatch, caplog):
    import sftdpo.validate as validate_module

    # Small blocks, so 27 rows make 9 blocks for two spawned workers (at 1M rows: 16 blocks of 65,536).
    monkeypatch.setattr(validate_module, "VERIFY_BLOCK", 3)
    monkeypatch.setattr(validate_module, "MIN_ROWS_FOR_WORKERS", 4)
    reworded = frame().assign(id=lambda f: f["id"] + "b", prompt=lambda f: f["prompt"].str.replace("What", "Say"))
    rows = pd.concat([frame(), reworded, frame()], ignore_index=True)  # the third copy: duplicates of the first
    settings = dict(source="demos.parquet", task_options={}, max_prompt_chars=100, max_completion_chars=200)
    alone = check_rows(rows, **settings, workers=1)
    with caplog.at_level("INFO", logger="sftdpo.validate"):
        side_by_side = check_rows(rows, **settings, workers=2)
    assert "verified by 2 worker processes" in caplog.text
    pd.testing.assert_frame_equal(alone, side_by_side)
    reasons = alone["reason"].tolist()
    assert reasons[:9] == reasons[9:18] == checked()["reason"].tolist()  # the verifier's verdicts included
    # The third copy: ids seen before are duplicates; the rows rejected the first time are checked again.
    assert reasons[18:] == [
        "duplicate_id", "verifier:wrong_answer", "verifier:invalid_step", "duplicate_prompt", "duplicate_id",
        "empty", "wrong_type:int", "too_long:>200", "duplicate_id",
    ]  # fmt: skip


def test_shard_checks_put_together_give_the_files_of_one_validate(tmp_path):
    """Rules validate_shard (each demo shard's own checks) and validate (the checks across rows, on digests): the
    files one in-process validate writes, with duplicates, near-duplicates and conflicting answers across shards."""
    from sftdpo.io import concat_parquet
    from sftdpo.validate import check_shard

    reworded = frame().assign(id=lambda f: f["id"] + "b", prompt=lambda f: f["prompt"].str.replace("What", "Say"))
    across = pd.DataFrame(
        [
            row(9, "What is 8+1?", "8+1=9\n#### 9", "9"),
            row(10, "what is  8+1?", "8+1=10\n#### 10", "10"),  # conflicting answers with r9, another shard
            row(11, "WHAT is 7+2?", "7+2=9\n#### 9", "9"),  # kept: sorted before r8, r8c (near-duplicates)
        ]
    )
    rows = pd.concat([frame(), reworded, frame().assign(id=lambda f: f["id"] + "c"), across], ignore_index=True)
    rows["difficulty"] = rows["difficulty"].astype(str)  # a parquet column has one type
    shards = [str(tmp_path / f"shard{i}.parquet") for i in range(3)]
    for i, path in enumerate(shards):
        write_parquet(rows.iloc[i::3].reset_index(drop=True), path)
    concat_parquet(shards, str(tmp_path / "demos.parquet"), sort_by="id")  # what merge_demos writes
    limits = dict(task_options={}, max_prompt_chars=100, max_completion_chars=200)
    checks = [str(tmp_path / f"checks{i}.parquet") for i in range(3)]
    for shard, path in zip(shards, checks):
        check_shard(shard_path=shard, checks_path=path, **limits)
    assert set(read_parquet(checks[0]).columns) >= {"id", "verifier", "prompt_digest", "answer_digest"}
    gates = {"max_rejected_fraction": 0.9, "min_rows": 1, "min_rows_per_difficulty": 1}
    reports = []
    for name, extra in (("one", limits), ("shards", {"checks_paths": checks})):
        out = tmp_path / name
        out.mkdir()
        reports.append(
            validate(
                demos_path=str(tmp_path / "demos.parquet"),
                validated_path=str(out / "v.parquet"),
                rejected_path=str(out / "r.parquet"),
                report_path=str(out / "report.json"),
                plot_paths={p: str(out / f"{p}.png") for p in ("difficulty", "lengths", "rejections")},
                gates=gates,
                **extra,
            )  # fmt: skip
        )
    assert reports[0] == reports[1]
    for name in ("v.parquet", "r.parquet"):
        pd.testing.assert_frame_equal(read_parquet(tmp_path / "one" / name), read_parquet(tmp_path / "shards" / name))
    by_reason = reports[0]["rejections_by_reason"]
    assert by_reason["conflicting_answers"] == 2 and by_reason["near_duplicate_prompt"] == 2
    assert by_reason["duplicate_prompt"] >= 2  # the third copy's prompts, in other shards than the first's
    # Checks of other shards than the demos' are an error, not misaligned verdicts.
    with pytest.raises(ValueError, match="do not line up with the rows of"):
        validate(demos_path=str(tmp_path / "demos.parquet"), validated_path=str(tmp_path / "x.parquet"),
                 rejected_path=str(tmp_path / "y.parquet"), report_path=str(tmp_path / "z.json"),
                 plot_paths={}, gates=gates, checks_paths=checks[:2])  # fmt: skip


def test_rejected_rows_name_the_file_and_line_their_meta_records():
    """`rejected_table` reads file and line from a row's meta (an import's `source`, a GSM8K problem's `problem`),
    also when JSON escapes the key; it skips parsing metas that cannot hold a "file" key, and gets them right."""
    import json

    from sftdpo.validate import rejected_table

    metas = [
        json.dumps({"source": {"file": "data/train.jsonl", "line": 7}}),
        json.dumps({"problem": {"file": "gsm8k/test.jsonl", "row": 12}}),
        '{"source": {"\\u0066ile": "escaped.jsonl", "line": 3}}',  # the key written with a JSON escape
        json.dumps({"source": {"path": "no-file-key.jsonl", "line": 4}}),
        json.dumps({"files": "a file is named but there is no key"}),
        "{}",
        "",
    ]
    rows = pd.DataFrame([row(i, f"What is {i}+1?", "x", "1", meta=meta) for i, meta in enumerate(metas)])
    rows["reason"], rows["field"] = "verifier:wrong_answer", "completion"
    table = rejected_table(rows, [])
    assert table["file"].tolist() == ["data/train.jsonl", "gsm8k/test.jsonl", "escaped.jsonl", None, None, None, None]
    assert table["line"].tolist()[:3] == [7, 12, 3] and table["line"].isna().tolist()[3:] == [True] * 4


def test_validated_rows_are_the_bytes_the_kept_frame_writes(tmp_path):
    """validate writes the kept rows from the demos table as read; a table read in several chunks (one a row group)
    gives the file that writing the kept rows of the frame gives, byte for byte. The prompts' dictionary outgrows
    the writer's limit (1 MB), and where the writer falls back to plain pages follows the chunks it is given."""
    from sftdpo.validate import VALIDATED_ROW_GROUP

    n = 20_000
    prompts = [f"Row {i:06d} of a long table of sums, each prompt its own text. What is {i}+1?" for i in range(n)]
    rows = pd.DataFrame(
        [row(i, prompts[i], f"{i}+1={i + 1}\n#### {i + 1}", str(i + 1 + (i % 7 == 0))) for i in range(n)]
    )  # every 7th row: a wrong answer, rejected
    demos = tmp_path / "demos.parquet"
    write_parquet(rows, demos, row_group_rows=5000)
    validate(
        demos_path=str(demos),
        validated_path=str(tmp_path / "ok.parquet"),
        rejected_path=str(tmp_path / "rej.parquet"),
        report_path=str(tmp_path / "v.json"),
        plot_paths={k: str(tmp_path / f"{k}.png") for k in ("difficulty", "lengths", "rejections")},
        gates={"max_rejected_fraction": 0.5, "min_rows": 1, "min_rows_per_difficulty": 1},
        task_options={},
        max_prompt_chars=512,
        max_completion_chars=200,
    )
    kept = read_parquet(demos)[[i % 7 != 0 for i in range(n)]].reset_index(drop=True)
    write_parquet(kept, tmp_path / "expected.parquet", row_group_rows=VALIDATED_ROW_GROUP)
    assert len(read_parquet(tmp_path / "ok.parquet")) == n - 2858
    assert (tmp_path / "ok.parquet").read_bytes() == (tmp_path / "expected.parquet").read_bytes()
