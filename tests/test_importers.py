"""File import (`collect.expert: files`): formats, file types, bad rows with file/line/field, sharding."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftdpo.collect import collect_shard
from sftdpo.importers import PRESETS_HINT, FilesExpert
from sftdpo.records import ImportFailure, read_records
from sftdpo.io import read_json
from sftdpo.tasks import get_task

GSM8K_LINES = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3+4 = <<3+4=7>>7\n#### 7"},
    {"question": "A pen costs $2. How much do 5 pens cost?", "answer": "5*2 = <<5*2=10>>10\n#### $10"},
    "{not json",
    {"question": "No answer line here?", "answer": "It is 4."},
    {"question": "", "answer": "#### 1"},
    {"question": "Sam earns 1,000 a week. How much in 2 weeks?", "answer": "1000*2 = <<1000*2=2000>>2000\n#### 2,000"},
    [1, 2, 3],
    {"question": "Seven?", "answer": "3+4 = 7\n#### seven"},
    {"q": "wrong keys", "a": "#### 3"},
    {"question": "What is 10 minus 4?", "answer": "10-4 = <<10-4=6>>6\nSo 6 left.\n#### 6.0"},
]


def write_jsonl(path, items):
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items))
    return str(path)


@pytest.fixture
def gsm8k():
    return get_task("gsm8k")


def test_gsm8k_jsonl_bad_lines_are_named_and_counted(tmp_path, gsm8k, caplog):
    path = write_jsonl(tmp_path / "train.jsonl", GSM8K_LINES)
    expert = FilesExpert(gsm8k, paths=[path], format="gsm8k", max_bad_fraction=1.0)
    caplog.set_level(logging.WARNING)
    problems = expert.shard_problems(0, 1)
    assert [p.id for p in problems] == ["train-000000", "train-000001", "train-000005", "train-000009"]
    assert [p.answer for p in problems] == ["7", "10", "2000", "6"]
    assert problems[1].prompt == "A pen costs $2. How much do 5 pens cost?"
    completion, meta = expert.demonstrate(problems[0])
    assert completion == "3+4 = 7\n#### 7"  # calculator annotation stripped, answer line normalised
    assert meta == {"source": {"file": path, "line": 1, "format": "gsm8k"}}
    assert expert.demonstrate(problems[3])[0] == "10-4 = 6\nSo 6 left.\n#### 6"
    assert [p.difficulty for p in problems] == ["1-2", "1-2", "1-2", "1-2"]
    messages = [b["message"] for b in expert.bad]
    assert messages == [
        f"{path}, line 3: not valid JSON (Expecting property name enclosed in double quotes, column 2)",
        f"{path}, line 4, field 'answer': no '#### <number>' answer line in 'answer'; {PRESETS_HINT}",
        f"{path}, line 5, field 'question': empty",
        f"{path}, line 7: expected a JSON object, got list",
        f"{path}, line 8, field 'answer': the '#### <number>' answer in 'answer' holds no number",
        f"{path}, line 9, field 'question': missing (columns present: ['a', 'q'])",
    ]
    for message in messages:
        assert f"bad row: {message}" in caplog.text
    assert "6 of 10 rows are bad" in caplog.text
    for p in problems:
        assert gsm8k.verify(expert.demonstrate(p)[0], p.answer).correct


def test_too_many_bad_rows_stop_the_shard_with_the_first_ones(tmp_path, gsm8k):
    path = write_jsonl(tmp_path / "train.jsonl", GSM8K_LINES)
    with pytest.raises(
        ImportFailure,
        match=r"6 of 10 rows of shard 0 are bad \(60\.0% > max_bad_fraction 10\.0%\)"
        r"(.|\n)*line 3: not valid JSON",
    ):
        FilesExpert(gsm8k, paths=[path], format="gsm8k").shard_problems(0, 1)


def test_columns_mapping_renames_fields(tmp_path, gsm8k):
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"problem": "2+2?", "solution": "2+2=4\n#### 4", "uid": "a1"},
            {"problem": "3+3?", "solution": "#### 6", "uid": 7},
        ],
    )
    expert = FilesExpert(
        gsm8k, paths=[path], format="gsm8k", columns={"question": "problem", "answer": "solution", "id": "uid"}
    )
    assert [(p.id, p.prompt, p.answer) for p in expert.shard_problems(0, 1)] == [
        ("a1", "2+2?", "4"),
        ("7", "3+3?", "6"),
    ]
    with pytest.raises(ValueError, match=r"collect.files.columns: \['prompt'\] are not fields of format 'gsm8k'"):
        FilesExpert(gsm8k, paths=[path], format="gsm8k", columns={"prompt": "problem"})
    bad = FilesExpert(gsm8k, paths=[path], format="gsm8k", columns={"question": "nope"}, max_bad_fraction=1.0)
    bad.shard_problems(0, 1)
    assert bad.bad[0]["message"] == (
        f"{path}, line 1, field 'question': missing column 'nope' (mapped by "
        "columns.question; present: ['problem', 'solution', 'uid'])"
    )


def test_json_array_reports_the_line_of_each_item(tmp_path, gsm8k):
    items = [
        {"instruction": "Add 2 and 3.", "input": "", "output": "2+3=5\n#### 5"},
        {"instruction": "Subtract.", "input": "9 - 4", "output": "9-4=5\n#### 5"},
        {"instruction": "Say hi.", "output": "hello"},
        {"input": "no instruction", "output": "#### 1"},
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(items, indent=2))
    starts = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if line == "  {"]
    assert [r.number for r in read_records(str(path))] == starts
    arithmetic = get_task("arithmetic")
    expert = FilesExpert(arithmetic, paths=[str(path)], format="alpaca", max_bad_fraction=1.0)
    problems = expert.shard_problems(0, 1)
    assert [(p.prompt, p.answer, p.difficulty) for p in problems] == [
        ("Add 2 and 3.", "5", "1"),
        ("Subtract.\n\n9 - 4", "5", "1"),
    ]
    assert [b["message"] for b in expert.bad] == [
        f"{path}, line {starts[2]}, field 'answer': no '#### <number>' answer line in 'output'; {PRESETS_HINT}, "
        "or map an answer column with columns.answer",
        f"{path}, line {starts[3]}, field 'instruction': missing (columns present: ['input', 'output'])",
    ]
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"instruction": "a", "output": "#### 1"},\n  {"instruction": "b" "output": 2}\n]')
    with pytest.raises(ImportFailure, match=r"broken.json, line 3: not valid JSON .*1 rows before it were read"):
        list(read_records(str(broken)))
    (tmp_path / "obj.json").write_text('{"data": []}')
    with pytest.raises(ImportFailure, match="expected a JSON array of objects"):
        list(read_records(str(tmp_path / "obj.json")))


def test_csv_with_columns_format_and_a_short_row(tmp_path, gsm8k):
    path = tmp_path / "rows.csv"
    path.write_text(
        'q,sol,final,level\n"What is 2+2?","2+2=4\n#### 4",4,easy\n"Short row",x\n"Cost?","It costs $1,200.",'
        '"$1,200",hard\n'
    )
    expert = FilesExpert(
        gsm8k,
        paths=[str(path)],
        format="columns",
        max_bad_fraction=1.0,
        columns={"prompt": "q", "completion": "sol", "answer": "final", "difficulty": "level"},
    )
    problems = expert.shard_problems(0, 1)
    assert [(p.id, p.prompt, p.answer, p.difficulty) for p in problems] == [
        ("rows-000000", "What is 2+2?", "4", "easy"),
        ("rows-000002", "Cost?", "1200", "hard"),
    ]
    assert [b["message"] for b in expert.bad] == [f"{path}, line 4: 2 fields, the header has 4"]
    # The multi-line quoted field is one row: the short row is on line 4 of the file.
    assert gsm8k.verify(expert.demonstrate(problems[1])[0], problems[1].answer).correct  # last-number fallback


def test_parquet_chat_rows(tmp_path, gsm8k):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "1+1 = 2\n#### 2"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "#### 1"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "#### 2"},
            ]
        },
        {"messages": [{"role": "user", "content": "2+5?"}, {"role": "assistant", "content": "2+5 = 7\n#### 7"}]},
        {"messages": []},
    ]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    expert = FilesExpert(gsm8k, paths=[str(path)], format="chat", max_bad_fraction=1.0)
    problems = expert.shard_problems(0, 1)
    assert [(p.id, p.prompt, p.answer) for p in problems] == [
        ("chat-000000", "1+1?", "2"),
        ("chat-000001", "b", "2"),  # a conversation: its final exchange is the demonstration
        ("chat-000002", "2+5?", "7"),
    ]
    meta = [expert.demonstrate(p)[1] for p in problems]
    assert meta[0] == {
        "source": {"file": str(path), "row": 1, "format": "chat"},
        "context": [{"role": "system", "content": "Be brief."}],
    }
    assert meta[1]["context"] == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "#### 1"}]
    assert "context" not in meta[2]
    assert [b["message"] for b in expert.bad] == [
        f"{path}, row 4, field 'messages': missing or not a non-empty list of {{role, content}}",
    ]


def test_shards_split_rows_by_index_modulo_and_summaries_count_bad_rows(tmp_path):
    good = [{"question": f"What is {i} plus {i}?", "answer": f"{i}+{i} = {2 * i}\n#### {2 * i}"} for i in range(20)]
    items = good[:7] + ["{broken"] + good[7:]
    path = write_jsonl(tmp_path / "data.jsonl", items)
    common = dict(
        task="gsm8k",
        task_options={},
        n_problems=1,
        expert="files",
        seed=0,
        n_shards=3,
        flush_every=4,
        expert_options={"paths": [path], "format": "gsm8k", "limit": 18, "max_bad_fraction": 0.5},
    )
    frames = [
        collect_shard(
            **common,
            shard=s,
            work_dir=str(tmp_path / "work"),
            out_path=str(tmp_path / f"{s}.parquet"),
            summary_path=str(tmp_path / f"{s}.json"),
        )
        for s in range(3)
    ]
    for s, frame in enumerate(frames):
        assert [int(i.split("-")[1]) % 3 for i in frame["id"]] == [s] * len(frame)
        assert frame["correct"].all() and (frame["expert"] == "files").all() and (frame["task"] == "gsm8k").all()
    ids = [i for f in frames for i in f["id"]]
    assert len(ids) == len(set(ids)) == 17  # 18 rows under the limit, one of them bad
    summaries = [read_json(tmp_path / f"{s}.json") for s in range(3)]
    assert [s["files"]["bad_rows"] for s in summaries] == [0, 1, 0]  # row 7 (line 8) belongs to shard 1
    assert summaries[1]["files"]["bad"] == [
        f"{path}, line 8: not valid JSON (Expecting property name enclosed in double quotes, column 2)"
    ]
    assert [s["files"]["rows_read"] for s in summaries] == [6, 6, 6]
    assert sum(s["n_written"] for s in summaries) == 17


def test_unknown_file_type_and_missing_file(tmp_path, gsm8k):
    with pytest.raises(ImportFailure, match="does not exist"):
        FilesExpert(gsm8k, paths=[str(tmp_path / "nope.jsonl")]).shard_problems(0, 1)
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ImportFailure, match="unknown file type '.txt'"):
        FilesExpert(gsm8k, paths=[str(tmp_path / "data.txt")]).shard_problems(0, 1)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    with pytest.raises(ValueError, match=r"several files are named \['train'\]"):
        FilesExpert(gsm8k, paths=[write_jsonl(a / "train.jsonl", []), write_jsonl(b / "train.jsonl", [])])


def test_progress_key_follows_the_data(tmp_path):
    from sftdpo.collect import progress_key

    path = write_jsonl(tmp_path / "train.jsonl", GSM8K_LINES[:2])
    params = {
        "code": "c",
        "task": "gsm8k",
        "task_options": {},
        "expert": "files",
        "expert_options": {"paths": [path], "format": "gsm8k"},
        "n_shards": 1,
        "seed": 0,
    }
    key = progress_key(params)
    assert progress_key(params) == key
    write_jsonl(tmp_path / "train.jsonl", GSM8K_LINES[:1] + [{**GSM8K_LINES[1], "answer": "5*2 = 10\n#### 10"}])
    assert progress_key(params) != key  # an edited solution is imported again, not read from stale progress
