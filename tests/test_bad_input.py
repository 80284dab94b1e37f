"""The bad-input corpus (tests/bad_input/, verdicts in expected.yaml): each file through the real code path.

An entry's verdict is `ok` (every row imported with exactly the listed values), `quarantined` (the good
rows imported, each bad row in rejected.parquet and validation.json with file, line, field and reason) or
`error` (a message naming the file or config key). Never a silent drop, a bare traceback or a wrong value.
"""

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, scratch_base_model, snakemake
from sftdpo.collect import collect_shard
from sftdpo.config_checks import check_config, schema_error_message
from sftdpo.tasks import size_problems
from sftdpo.io import read_json, read_parquet, write_parquet
from sftdpo.records import ImportFailure
from sftdpo.validate import validate

CORPUS = ROOT / "tests" / "bad_input"
ENTRIES = yaml.safe_load((CORPUS / "expected.yaml").read_text())
PERMISSIVE = {"max_rejected_fraction": 1.0, "min_rows": 0, "min_rows_per_difficulty": 0}


def entry_id(entry):
    options = entry.get("options", {})
    extra = [f"{k}={v}" for k, v in options.items() if k in ("answer_pattern", "encoding_errors")]
    if entry["run"] == "import" and "answer_pattern" not in options and entry["file"] == "answers_a_colon.jsonl":
        extra.append("default-pattern")
    if "shards" in entry:
        extra.append(f"shards={entry['shards']}")
    return "-".join([entry["file"], *extra])


def test_the_corpus_covers_every_class_of_the_issue():
    classes = {e["class"] for e in ENTRIES}
    assert classes == {
        "number forms",
        "answer conventions",
        "empty input",
        "near-duplicate prompts",
        "convert drops",
        "empty shards and splits",
        "encodings",
        "missing local model",
        "cross-field config",
        "schema errors",
    }
    files = {p.name for p in CORPUS.iterdir() if p.name != "expected.yaml"}
    assert files == {e["file"] for e in ENTRIES}, "every corpus file has a verdict, every verdict a file"
    assert all(e["verdict"] in ("ok", "quarantined", "error") for e in ENTRIES)


# -- import: collect (expert files) -> validate ---------------------------------------------------------
def run_import(path: Path, options: dict, tmp_path: Path, n_shards: int = 1):
    """The last shard of `n_shards` (all of the file with one shard)."""
    shard, summary = tmp_path / "0.parquet", tmp_path / "0.json"
    collect_shard(
        task="gsm8k",
        task_options={},
        n_problems=1,
        expert="files",
        expert_options={"paths": [str(path)], "max_bad_fraction": 1.0, **options},
        seed=0,
        shard=n_shards - 1,
        n_shards=n_shards,
        work_dir=str(tmp_path / "work"),
        out_path=str(shard),
        summary_path=str(summary),
        flush_every=10,
    )
    stats = validate(
        demos_path=str(shard),
        validated_path=str(tmp_path / "validated.parquet"),
        rejected_path=str(tmp_path / "rejected.parquet"),
        report_path=str(tmp_path / "validation.json"),
        plot_paths={k: str(tmp_path / f"{k}.png") for k in ("difficulty", "lengths", "rejections")},
        task_options={"gsm8k": {}},
        max_prompt_chars=2000,
        max_completion_chars=4000,
        gates=PERMISSIVE,
        import_summaries=[str(summary)],
    )
    return stats, read_parquet(tmp_path / "validated.parquet"), read_parquet(tmp_path / "rejected.parquet")


IMPORTS = [e for e in ENTRIES if e["run"] == "import"]


@pytest.mark.parametrize("entry", IMPORTS, ids=[entry_id(e) for e in IMPORTS])
def test_import_verdict(entry, tmp_path, capsys):
    path = CORPUS / entry["file"]
    if entry["verdict"] == "error":
        with pytest.raises(ImportFailure) as err:
            run_import(path, entry["options"], tmp_path, entry.get("shards", 1))
        assert entry["error"].format(path=path) in str(err.value)
        return
    stats, kept, rejected = run_import(path, entry["options"], tmp_path)
    assert kept["answer"].tolist() == entry["answers"]
    for row in kept.itertuples():  # the value written into the completion is the answer, in the pipeline's form
        assert row.completion.splitlines()[-1] == f"#### {row.answer}" and "<<" not in row.completion
    if "difficulties" in entry:
        assert kept["difficulty"].tolist() == entry["difficulties"]
    if "last_lines" in entry:
        assert [c.splitlines()[-1] for c in kept["completion"]] == entry["last_lines"]
    for text in entry.get("prompts_contain", []):
        assert any(text in p for p in kept["prompt"])
    expected = entry.get("rejected", [])
    assert len(rejected) == len(expected), rejected[["file", "line", "field", "reason", "detail"]]
    assert (rejected["file"] == str(path)).all()
    for want in expected:
        rows = rejected[rejected["line"] == want["line"]]
        assert len(rows) == 1, (want, rejected[["line", "reason"]])
        row = rows.iloc[0]
        assert (row["field"] if isinstance(row["field"], str) else None) == want["field"]
        assert want["reason"] in f"{row['reason']} {row['detail']}", (want, row["reason"], row["detail"])
    imported_bad = int(rejected["reason"].str.startswith("import:").sum())
    report = read_json(tmp_path / "validation.json")
    assert report["import"]["n_bad_rows"] == imported_bad == stats["import"]["n_bad_rows"]
    assert sum(report["import"]["bad_by_reason"].values()) == imported_bad
    assert report["n_kept"] == len(kept) and report["n_rejected"] == len(expected) - imported_bad
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"validate: {len(kept)} of {len(kept) + len(expected) - imported_bad} demonstrations kept")
    if entry["verdict"] == "quarantined":
        assert str(tmp_path / "rejected.parquet") in line
        assert ("quarantined" in line) == bool(imported_bad)
    else:
        assert not expected and "rejected" not in line


# -- convert: validated rows -> tokens, with gates ---------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sftdpo.tasks import get_task

    task = get_task("arithmetic")
    return scratch_base_model(tmp_path_factory.mktemp("base"), task, task.problems(60, seed=0))


CONVERTS = [e for e in ENTRIES if e["run"] == "convert"]


@pytest.mark.parametrize("entry", CONVERTS, ids=[entry_id(e) for e in CONVERTS])
def test_convert_verdict(entry, tmp_path, tiny_model):
    from sftdpo.convert import ConvertGateError, convert

    demos = pd.read_json(CORPUS / entry["file"], lines=True, dtype=False)
    write_parquet(demos, tmp_path / "validated.parquet")
    outputs = {"chat_path": tmp_path / "chat.parquet", "tokens_path": tmp_path / "t.h5"}
    kwargs = dict(
        validated_path=str(tmp_path / "validated.parquet"),
        model_dir=tiny_model,
        report_path=str(tmp_path / "convert.json"),
        **{k: str(v) for k, v in outputs.items()},
        **entry["options"],
    )
    assert entry["verdict"] == "error"
    with pytest.raises(ConvertGateError) as err:
        convert(**kwargs)
    message = str(err.value)
    assert entry["error"] in message
    assert "gate min_rows_per_difficulty: difficulty '3' would keep fewer than 1 rows" in message
    assert "raise convert.max_length (the longest row has" in message
    assert not any(p.exists() for p in outputs.values())
    # With a max_length that fits every row the same file converts, every difficulty kept.
    report = convert(**{**kwargs, "max_length": 256})
    assert report["kept_by_difficulty"] == {"1": 2, "3": 6} and report["dropped_fraction"] == 0.0


# -- config: schema + cross-field checks at load time ------------------------------------------------------
def merged(overlay: dict) -> dict:
    config = copy.deepcopy(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))

    def merge(base, extra):
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(config, overlay)
    return config


def load_config(path: Path) -> None:
    """What the Snakefile does at load: the schema (Snakemake's validate), then sftdpo.config_checks."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as schema_validate

    config = merged(yaml.safe_load(path.read_text()))
    try:
        schema_validate(config, str(ROOT / "config" / "schema.yaml"))
    except WorkflowError as err:
        raise ValueError(schema_error_message(err)) from None
    check_config(config, size_problems(config))


CONFIGS = [e for e in ENTRIES if e["run"] == "config"]


@pytest.mark.parametrize("entry", CONFIGS, ids=[entry_id(e) for e in CONFIGS])
def test_config_verdict(entry, tmp_path, monkeypatch):
    # Relative model paths resolve in an empty working directory; tests/ is there for corpus data paths.
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    monkeypatch.chdir(tmp_path)
    path = CORPUS / entry["file"]
    if entry["verdict"] == "ok":
        load_config(path)
        return
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert entry["error"] in str(err.value)
    if entry.get("cli"):
        proc = snakemake("-n", "--configfile", path, cwd=tmp_path, check=False)
        assert proc.returncode != 0
        text = proc.stdout + proc.stderr
        assert entry["error"] in text and "Traceback" not in text
        # One message, not the schema: a few lines besides Snakemake's own two about profile and config.
        assert len(text.strip().splitlines()) <= 10, text
