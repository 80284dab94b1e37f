"""The gsm8k task (answer extraction, normalisation, verifier, strata, problems from a file), the real
GSM8K files, and real data through the snakemake CLI: import -> validate -> convert -> split -> SFT ->
evaluate."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import GSM8K, ROOT, TINY, link_gsm8k, snakemake
from sftdpo.experts import ProgramExpert
from sftdpo.io import read_parquet
from sftdpo.tasks import get_task
from sftdpo.tasks.gsm8k import bucket, check_annotations, extract_answer, normalise_number

DATA = GSM8K
OVERLAY = ROOT / "tests" / "config" / "gsm8k.yaml"
needs_data = pytest.mark.skipif(
    not (DATA / "train.jsonl").exists(), reason=f"GSM8K not found at {DATA} (the repository's ../shared/datasets/gsm8k)"
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("72", "72"),
        ("1,080", "1080"),
        ("$18", "18"),
        ("$18.00", "18"),
        ("18.0", "18"),
        ("0.50", "0.5"),
        ("-3", "-3"),
        ("2,520,000", "2520000"),
        ("7.", "7"),
        ("25%", "25"),
        ("about 12 apples", "12"),
        ("none", None),
        ("", None),
        (None, None),
    ],
)
def test_normalise_number(text, expected):
    assert normalise_number(text) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("step\n#### 72", ("72", "answer_line")),
        ("#### $1,080.00", ("1080", "answer_line")),
        ("#### 5\nmore text\n#### 6", ("6", "answer_line")),
        ("She pays 3*4 = 12 dollars.\nThe answer is 12.", ("12", "last_number")),
        ("48/2 = <<48/2=24>>24 clips", ("24", "last_number")),
        ("no numbers at all", (None, "none")),
        ("", (None, "none")),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    "completion, answer, correct, reason",
    [
        ("3+4 = 7\n#### 7", "7", True, None),
        ("#### 7.0", "7", True, None),
        ("It costs $1,200.", "1200", True, None),  # last-number fallback
        ("3+4 = 8\n#### 8", "7", False, "wrong_answer"),
        ("I do not know.", "7", False, "no_answer_line"),
        ("3+4 = <<3+4=8>>8, minus 1 = <<8-1=7>>7\n#### 7", "7", False, "invalid_step"),
        ("3+4 = <<3+4=7>>7\n#### 7", "7", True, None),
        ("a third = <<1/3=0.33>>0.33\n#### 2", "2", True, None),  # rounded annotations pass (1% tolerance)
    ],
)
def test_verifier(completion, answer, correct, reason):
    verdict = get_task("gsm8k").verify(completion, answer)
    assert (verdict.correct, verdict.reason) == (correct, reason)


def test_strata_buckets():
    assert [bucket(s, [2, 4]) for s in (1, 2, 3, 4, 5, 9)] == ["1-2", "1-2", "3-4", "3-4", "5+", "5+"]
    assert [bucket(s, [1, 3]) for s in (1, 2, 3, 4)] == ["1", "2-3", "2-3", "4+"]
    task = get_task("gsm8k", buckets=[1, 3])
    assert task.difficulty("a\nb\n\nc\n#### 1") == "2-3"
    assert get_task("arithmetic").difficulty("1+2=3\n3+4=7\n#### 7") == "2"
    assert check_annotations("x = <<2*3=7>>7") == "2*3=7"
    with pytest.raises(ValueError, match="buckets must be increasing"):
        get_task("gsm8k", buckets=[4, 2])


def write_gsm8k(path, n):
    rows = [
        {
            "question": f"Ann has {i} pens and buys {i + 1} more. How many pens?",
            "answer": "\n".join(
                [f"Step {j}." for j in range(i % 6)]
                + [f"{i}+{i + 1} = <<{i}+{i + 1}={2 * i + 1}>>{2 * i + 1}", f"#### {2 * i + 1:,}"]
            ),
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_problems_come_from_the_file(tmp_path):
    rows = write_gsm8k(tmp_path / "mini.jsonl", 600)
    task = get_task("gsm8k", path=str(tmp_path / "mini.jsonl"), prompt_template="Q: {question}")
    problems = task.problems(50, seed=1)
    assert [p.id for p in problems] == [p.id for p in task.problems(50, seed=1)]
    assert [p.id for p in problems] != [p.id for p in task.problems(50, seed=2)]
    assert len({p.id for p in problems}) == 50 and [p.id for p in problems] == sorted(p.id for p in problems)
    for p in problems:
        index = int(p.id.rsplit("-", 1)[1])
        row = rows[index]
        assert p.id == f"gsm8k-mini-{index:05d}" and p.meta["line"] == index + 1
        assert p.prompt == "Q: " + row["question"]
        assert p.answer == str(2 * index + 1)  # "1,001" normalised
        assert p.difficulty == bucket(index % 6 + 1, [2, 4])
        solution = task.solve(p)
        assert "<<" not in solution and solution.endswith(f"#### {2 * index + 1}")
        assert task.verify(solution, p.answer).correct
    with pytest.raises(ValueError, match=r"asked for 601 problems but .*mini.jsonl has 600 rows"):
        task.problems(601, seed=0)
    (tmp_path / "bad.jsonl").write_text('{"question": "a", "answer": "#### 1"}\n{"question": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2, field 'answer': missing"):
        get_task("gsm8k", path=str(tmp_path / "bad.jsonl")).problems(1, seed=0)
    with pytest.raises(ValueError, match="task.gsm8k.path is not set"):
        get_task("gsm8k").problems(1, seed=0)


def test_program_expert_errors_on_gsm8k_are_caught(tmp_path):
    write_gsm8k(tmp_path / "mini.jsonl", 400)
    task = get_task("gsm8k", path=str(tmp_path / "mini.jsonl"))
    expert = ProgramExpert(task, error_rate=0.3, seed=0)
    kinds = Counter()
    for p in task.problems(400, seed=0):
        completion, meta = expert.demonstrate(p)
        assert task.verify(completion, p.answer).correct == ("injected_error" not in meta)
        kinds[meta.get("injected_error")] += 1
    assert set(kinds) == {None, "wrong_answer"} and 80 < kinds["wrong_answer"] < 160


@needs_data
def test_real_gsm8k_gold_solutions_all_verify():
    for split, n in (("train", 7473), ("test", 1319)):
        task = get_task("gsm8k", path=str(DATA / f"{split}.jsonl"), strip_annotations=False)
        problems = task.problems(n, seed=0)
        verdicts = Counter(task.verify(task.solve(p), p.answer).correct for p in problems)
        assert verdicts == {True: n}  # 100% agreement with the gold answers, annotations checked too
        levels = Counter(p.difficulty for p in problems)
        assert set(levels) == {"1-2", "3-4", "5+"} and min(levels.values()) > n / 10


def file_answers(path: Path) -> dict[int, str]:
    out = {}
    for index, line in enumerate(path.read_text().splitlines()):
        final = json.loads(line)["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        out[index] = final
    return out


@pytest.mark.e2e
@needs_data
def test_real_gsm8k_through_the_workflow(tmp_path):
    """Import 300 GSM8K rows -> validate -> convert -> split -> SFT (6 steps) -> evaluate, via the CLI."""
    paths = tmp_path / "paths.yaml"
    paths.write_text(yaml.safe_dump({"collect": {"files": {"paths": [str(DATA / "train.jsonl")]}}}))
    snakemake("results/eval/sft.parquet", "-c2", "--configfile", TINY, OVERLAY, paths, cwd=tmp_path)
    r = lambda p: tmp_path / "results" / p  # noqa: E731
    assert not r("rollouts").exists() and not r("dpo").exists() and not r("eval/base.parquet").exists()
    gold = file_answers(DATA / "train.jsonl")

    demos = read_parquet(r("demos/demos.parquet"))
    assert len(demos) == 300 and demos["id"].is_unique
    assert set(demos["id"]) == {f"train-{i:06d}" for i in range(300)}
    assert demos["correct"].all()  # the verifier agrees with every gold solution
    assert all(row.answer == gold[int(row.id.split("-")[1])] for row in demos.itertuples())
    shard_summaries = [json.loads(r(f"demos/shards/{s}.json").read_text()) for s in (0, 1)]
    assert [s["n_written"] for s in shard_summaries] == [150, 150]
    assert [s["files"]["bad_rows"] for s in shard_summaries] == [0, 0]

    validation = json.loads(r("demos/validation.json").read_text())
    assert validation["n_kept"] == 300 and validation["rejections_by_reason"] == {}
    assert set(validation["kept_by_difficulty"]) == {"1-2", "3-4", "5+"}

    convert = json.loads(r("data/convert.json").read_text())
    assert convert["n_rows"] + len(convert["overlength"]) == 300
    assert all(o["n_tokens"] > 320 for o in convert["overlength"])
    split = json.loads(r("data/split.json").read_text())
    assert sum(split["counts"].values()) == convert["n_rows"]
    assert set(split["by_stratum"]) == {"1-2/gsm8k/files", "3-4/gsm8k/files", "5+/gsm8k/files"}
    for level, counts in split["by_stratum"].items():
        assert counts["train"] > counts["val"] > 0 and counts["test"] > 0, level
    test = read_parquet(r("data/test.parquet"))
    assert len(test) == split["counts"]["test"]

    sft = json.loads(r("sft/metrics.json").read_text())
    assert sft["global_step"] == 6 and sft["n_train"] == split["counts"]["train"]
    evaluation = read_parquet(r("eval/sft.parquet"))
    assert list(evaluation["id"]) == list(test["id"])
    assert all(row.gold == gold[int(row.id.split("-")[1])] for row in evaluation.itertuples())
    assert set(evaluation["difficulty"]) == {"1-2", "3-4", "5+"}
    base = json.loads((r("base/model") / "tokenizer.json").read_text())
    assert len(base["model"]["vocab"]) > 900  # the scratch tokenizer learned GSM8K's words


@needs_data
def test_gsm8k_qwen_example_plans_every_rule(tmp_path):
    """config/examples/gsm8k-qwen.yaml passes schema validation and plans the whole DAG (dry run)."""
    work = tmp_path / "work"
    work.mkdir()
    link_gsm8k(work)  # the example's data/gsm8k
    out = snakemake("-n", "--configfile", ROOT / "config/examples/gsm8k-qwen.yaml", cwd=work).stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1].split("total")[0], re.M))
    assert counts == {
        "base_model": "1",
        "collect": "4",  # imported rows: no problems job
        "merge_demos": "1",
        "validate_shard": "4",
        "validate": "1",
        "convert_shard": "1",
        "convert": "1",
        "split": "1",
        "sft": "1",
        "rollouts": "4",
        "merge_rollouts": "1",
        "preferences": "1",
        "dpo": "1",
        "evaluate": "3",
        "evaluate_val": "2",
        "report": "1",
        "all": "1",
    }
    example = yaml.safe_load((ROOT / "config/examples/gsm8k-qwen.yaml").read_text())
    assert example["sft"]["resources"]["gpu"] > 1 and example["sft"]["train"]["precision"] == "bf16"
    assert example["sft"]["train"]["activation_checkpointing"] and example["rollouts"]["backend"] == "vllm"
    for stage in ("sft", "dpo"):
        for key in ("accelerate_config", "deepspeed_config"):
            assert (ROOT / example[stage]["launch"][key]).exists()
