"""The DAG through the snakemake CLI: dry runs, config validation, targets, quality gates, and e2e."""

import json
import re

import h5py
import pytest
import yaml

from conftest import ROOT, TINY, TINY_SFT_STEPS, OPTIONAL_RULES, job_counts, snakemake
from sftdpo.io import read_parquet

EDGES = {
    ("base_model", "convert_shard"),
    ("problems", "collect"),
    ("collect", "merge_demos"),
    ("merge_demos", "validate"),
    ("collect", "validate_shard"),
    ("validate_shard", "validate"),
    ("collect", "validate"),  # the shard summaries: rows the importer could not read
    ("validate", "convert_shard"),
    ("validate", "convert"),  # the path named in a failed gate's message
    ("convert_shard", "convert"),
    ("validate", "report"),
    ("convert", "split"),
    ("convert", "sft"),
    # convert.json's rendering record: every stage that loads a model checks its tokenizer against it
    ("convert", "rollouts"),
    ("convert", "dpo"),
    ("convert", "evaluate"),
    ("convert", "evaluate_val"),
    ("base_model", "sft"),
    ("split", "sft"),
    ("split", "rollouts"),
    ("split", "evaluate"),
    ("split", "evaluate_val"),
    ("split", "report"),
    ("sft", "rollouts"),
    ("sft", "dpo"),
    ("sft", "evaluate"),
    ("sft", "evaluate_val"),
    ("sft", "report"),
    ("base_model", "evaluate"),
    ("rollouts", "merge_rollouts"),
    ("merge_rollouts", "preferences"),
    ("sft", "preferences"),
    ("preferences", "dpo"),
    ("preferences", "report"),
    ("dpo", "evaluate"),
    ("dpo", "report"),
    ("evaluate", "report"),
    ("evaluate_val", "report"),
    ("dpo", "evaluate_val"),
    ("report", "all"),
    ("collect", "all"),
    ("rollouts", "all"),
}


# The jobs of the data stages in the default DAG (collect.shards 2).
DATA_JOBS = {"base_model": 1, "problems": 1, "collect": 2, "merge_demos": 1, "validate_shard": 2, "validate": 1,
             "convert_shard": 1, "convert": 1, "split": 1}  # fmt: skip


def test_dry_run_lists_every_rule(tmp_path):
    out = snakemake("-n", cwd=tmp_path).stdout
    assert job_counts(out) == {
        **DATA_JOBS,
        "sft": 1,
        "rollouts": 2,
        "merge_rollouts": 1,
        "preferences": 1,
        "dpo": 1,
        "evaluate": 3,
        "evaluate_val": 2,
        "report": 1,
        "all": 1,
    }


def test_every_rule_says_what_it_does(tmp_path):
    listed = dict(re.findall(r"^(\w+) \((.+)\)$", snakemake("--list-rules", cwd=tmp_path).stdout, re.M))
    on_request = {"export", "plan"}  # not in the default DAG: `snakemake results/export/{stage}`, `make plan`
    assert set(listed) == {rule for edge in EDGES for rule in edge} | OPTIONAL_RULES | on_request
    assert all(len(text) > 20 for text in listed.values()), listed


def test_rulegraph_has_the_pipeline_order(tmp_path):
    dot = snakemake("--rulegraph", cwd=tmp_path).stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    edges = {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)}
    assert edges == EDGES


def test_targeted_data_artifact_needs_only_data_stages(tmp_path):
    out = snakemake("-n", "results/data/train.parquet", cwd=tmp_path).stdout
    assert job_counts(out) == DATA_JOBS


@pytest.mark.parametrize(
    "overlay, message",
    [
        ({"dpo": {"betta": 0.2}}, "Additional properties are not allowed ('betta' was unexpected)"),
        ({"sft": {"train": {"max_steps": "many"}}}, "'many' is not of type 'integer'"),
        ({"collect": {"expert": "oracle"}}, "'oracle' is not one of ['program', 'teacher', 'policy', 'files']"),
        # Cross-field checks (sftdpo.config_checks) stop the workflow before any job too.
        ({"convert": {"max_length": 200}}, "sft.train.max_length (96) < convert.max_length (200)"),
        ({"collect": {"expert": "policy"}}, "collect.expert is 'policy' but collect.policy is not set"),
    ],
)
def test_config_errors_name_the_key(tmp_path, overlay, message):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake("-n", "--configfile", tmp_path / "bad.yaml", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_quality_gate_stops_the_dag_with_the_numbers(tmp_path):
    (tmp_path / "noisy.yaml").write_text(
        yaml.safe_dump({"task": {"n_problems": 300}, "collect": {"program": {"error_rate": 0.5}}})
    )
    proc = snakemake(
        "results/data/train.parquet", "-c2", "--configfile", TINY, tmp_path / "noisy.yaml", cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "Error in rule validate" in text
    assert re.search(r"gate max_rejected_fraction: \d+/300 rows rejected \(\d+\.\d%\) > 20\.0%", text)
    assert not (tmp_path / "results/demos/validated.parquet").exists()


def test_quarantined_import_rows_are_reported_on_the_console_and_in_the_tables(tmp_path):
    """A run that succeeds with rows the importer could not read says so: one console line, validation.json
    (counts by reason) and rejected.parquet (file, line, reason)."""
    data = ROOT / "tests" / "bad_input" / "latin1_byte.jsonl"
    overlay = {
        "task": {"name": "gsm8k"},
        "collect": {"expert": "files", "shards": 2, "files": {"paths": [str(data)], "max_bad_fraction": 1.0}},
        "validate": {"gates": {"min_rows": 1, "min_rows_per_difficulty": 1}},
    }
    (tmp_path / "import.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake("results/demos/validation.json", "-c1", "--configfile", tmp_path / "import.yaml", cwd=tmp_path)
    assert (
        "validate: 2 of 2 demonstrations kept; 1 import rows quarantined {'not valid UTF-8': 1} "
        "(file, line and reason of each: results/demos/rejected.parquet)"
    ) in proc.stdout + proc.stderr
    report = json.loads((tmp_path / "results/demos/validation.json").read_text())
    assert report["import"] == {"n_bad_rows": 1, "bad_by_reason": {"not valid UTF-8": 1}}
    rejected = read_parquet(tmp_path / "results/demos/rejected.parquet")
    assert rejected[["file", "line", "reason"]].values.tolist() == [[str(data), 2, "import:not valid UTF-8"]]


@pytest.mark.e2e
def test_end_to_end_report(tiny_run):
    workdir, _ = tiny_run
    summary = json.loads((workdir / "results/report/summary.json").read_text())
    test = read_parquet(workdir / "results/data/test.parquet")
    for stage in ("base", "sft", "dpo"):
        s = summary["stages"][stage]
        assert s["n"] == len(test)
        assert 0.0 <= s["accuracy"] <= 1.0
        assert set(s["by_difficulty"]) == set(test["difficulty"])
        rows = read_parquet(workdir / f"results/eval/{stage}.parquet")
        assert abs(rows["correct"].mean() - s["accuracy"]) < 1e-6
        assert list(rows.columns[:9]) == [
            "id",
            "stage",
            "task",
            "difficulty",
            "completion",
            "prediction",
            "gold",
            "correct",
            "n_tokens",
        ]
    for name in ("sft-base", "dpo-sft"):
        d = summary["deltas"][name]
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    # The untrained base model cannot do arithmetic; SFT on the tiny config's steps learns some of it.
    assert summary["stages"]["base"]["accuracy"] == 0.0
    assert summary["stages"]["sft"]["accuracy"] > 0.0
    assert (workdir / "results/report/comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "| sft |" in (workdir / "results/report/report.md").read_text()


@pytest.mark.e2e
def test_end_to_end_artifacts(tiny_run):
    workdir, _ = tiny_run
    r = lambda p: workdir / "results" / p  # noqa: E731
    demos = read_parquet(r("demos/demos.parquet"))
    validated, rejected = read_parquet(r("demos/validated.parquet")), read_parquet(r("demos/rejected.parquet"))
    assert len(demos) == 1000 and len(validated) + len(rejected) == 1000
    injected = demos["meta"].str.contains("injected_error")
    assert set(rejected["id"]) == set(demos.loc[injected, "id"])  # validation caught every emulated error
    splits = {s: read_parquet(r(f"data/{s}.parquet")) for s in ("train", "val", "test")}
    assert sum(len(f) for f in splits.values()) == len(validated)
    prompts = [set(f["prompt"].map(lambda m: m[0]["content"])) for f in splits.values()]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    with h5py.File(r("data/tokens.h5")) as h5:
        assert h5["tokens"].shape == (len(validated), 96, 3)
    rollouts = read_parquet(r("rollouts/rollouts.parquet"))
    assert len(rollouts) == (40 + 16) * 4 and rollouts["id"].is_unique
    assert rollouts.groupby("split")["prompt_id"].nunique().to_dict() == {"train": 40, "val": 16}
    assert set(rollouts.loc[rollouts["split"] == "val", "prompt_id"]) <= set(splits["val"]["id"])
    pairs = read_parquet(r("prefs/pairs.parquet"))
    assert len(pairs) > 0 and {"prompt", "chosen", "rejected", "kind", "split", "shared_tokens"} <= set(pairs.columns)
    assert (pairs["shared_tokens"] >= 0).all() and set(pairs["split"]) <= {"train", "val"}
    sft = json.loads(r("sft/metrics.json").read_text())
    dpo = json.loads(r("dpo/metrics.json").read_text())
    assert sft["global_step"] == TINY_SFT_STEPS and dpo["global_step"] == 10
    assert (
        dpo["n_pairs"] == (pairs["split"] == "train").sum()
        and dpo["n_heldout_pairs"] == (pairs["split"] == "val").sum()
    )
    assert dpo["diagnostics"]["train"]["steps"][1] == 10 and "verdict" in dpo["diagnostics"]
    assert (r("dpo/adapter") / "adapter_config.json").exists()  # LoRA over the full SFT model
    # The base as an absolute path (loads from any directory) and its place beside the adapter (a moved project).
    assert json.loads((r("dpo/adapter") / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        r("sft/model")
    )
    assert json.loads((r("dpo/adapter") / "sftdpo_base.json").read_text())["relative_to_adapter"] == "../../sft/model"
    assert len(list((workdir / "results/benchmarks").rglob("*.tsv"))) == 24  # 22 jobs + evaluate_val sft, dpo


@pytest.mark.e2e
def test_html_report_and_noop_rerun(tiny_run):
    workdir, _ = tiny_run
    assert (
        "Nothing to be done"
        in snakemake("-c2", "--configfile", TINY, cwd=workdir).stdout
        + snakemake("-n", "--configfile", TINY, cwd=workdir).stdout
    )
    snakemake("--configfile", TINY, "--report", "report.html", cwd=workdir)
    html = (workdir / "report.html").read_text()
    for name in ("comparison.png", "loss.png", "curves.png", "rejections.png"):
        assert name in html
    # The workflow's front page (workflow/report/workflow.rst), with this run's config filled in.
    assert "a language model taken from expert demonstrations" in html and "arithmetic</tt>" in html
