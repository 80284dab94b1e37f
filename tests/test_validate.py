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
