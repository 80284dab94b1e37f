"""Issue 4: a changed parameter or code reruns exactly its dependants; targeted rebuilds; determinism."""

import filecmp
import json
import shutil

import pytest
import yaml

from conftest import ROOT, RULES, TINY, job_counts, snakemake
from sftdpo.io import read_parquet
from sftdpo.lineage import sidecar_path

pytestmark = pytest.mark.e2e

DOWNSTREAM = RULES
SHARDED = {"collect": 2, "validate_shard": 2, "convert_shard": 2, "rollouts": 2}


EVALUATED = ("base", "sft", "dpo")  # on test; on val all but base (what selects among DPO runs)


def jobs(*rules, stages=EVALUATED):
    """Expected jobs per rule, when the models of `stages` are (re)evaluated."""
    per_rule = {"evaluate": len(stages), "evaluate_val": len(set(stages) - {"base"}), **SHARDED}
    return {r: per_rule.get(r, 1) for r in rules}


def from_(rule, stages=EVALUATED):
    return jobs(*DOWNSTREAM[DOWNSTREAM.index(rule) :], stages=stages)


AFTER_SFT = from_("sft", stages=("sft", "dpo"))
AFTER_ROLLOUTS = from_("rollouts", stages=("dpo",))
AFTER_PREFS = from_("preferences", stages=("dpo",))
AFTER_DPO = from_("dpo", stages=("dpo",))


def dry_run(workdir, *args, snakefile=None):
    extra = ["-s", snakefile] if snakefile else []
    return snakemake("-n", *extra, "--configfile", TINY, *args, cwd=workdir).stdout


PARAMETER_CHANGES = [
    ({"collect": {"program": {"error_rate": 0.06}}}, from_("collect")),
    ({"model": {"scratch": {"layers": 3}}}, {**jobs("base_model"), **from_("convert_shard")}),
    ({"validate": {"max_completion_chars": 1000}}, from_("validate_shard")),
    ({"validate": {"gates": {"min_rows": 40}}}, from_("validate")),  # the shards' checks stay
    ({"convert": {"max_length": 90}}, from_("convert_shard")),
    ({"convert": {"gates": {"max_dropped_fraction": 0.2}}}, from_("convert")),  # the shards stay
    ({"split": {"strata": ["difficulty"]}}, from_("split")),
    ({"sft": {"train": {"learning_rate": 0.002}}}, AFTER_SFT),
    ({"sft": {"curriculum": {"stages": [{"name": "all", "difficulty_mix": {"1": 1, "2": 1, "3": 1}}]}}}, AFTER_SFT),
    ({"rollouts": {"temperature": 0.9}}, AFTER_ROLLOUTS),
    ({"preferences": {"max_pairs_per_prompt": 3}}, AFTER_PREFS),
    ({"dpo": {"beta": 0.2}}, AFTER_DPO),
    ({"evaluate": {"max_new_tokens": 30}}, jobs("evaluate", "evaluate_val", "report", "all")),
    ({"report": {"bootstrap_samples": 500}}, jobs("report", "all")),
]


def test_up_to_date_run_schedules_nothing(finished):
    assert job_counts(dry_run(finished)) == {}


@pytest.mark.parametrize("change, expected", PARAMETER_CHANGES, ids=lambda v: str(v)[:40])
def test_parameter_change_reruns_exactly_the_dependants(finished, change, expected):
    (finished / "change.yaml").write_text(yaml.safe_dump(change))
    out = dry_run(finished, "change.yaml")
    assert job_counts(out) == expected
    if "dpo" in change:  # evaluate runs for the dpo stage only
        assert "stage=dpo" in out and "stage=base" not in out and "stage=sft" not in out


@pytest.fixture
def repo_copy(tmp_path):
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy2(ROOT / "Snakefile", copy / "Snakefile")
    for name in ("rules", "workflow", "src", "config", "profiles"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return copy


@pytest.mark.parametrize(
    "module, expected",
    [
        ("report.py", jobs("report", "all")),
        ("preferences.py", AFTER_PREFS),
        # Only the `files` expert (and a tokenizer learnt from an import) runs the importer: nothing on the default.
        ("importers.py", {}),
        ("teacher.py", {}),
    ],
)
def test_library_code_change_reruns_its_stage(finished, repo_copy, module, expected):
    snakefile = repo_copy / "Snakefile"
    assert job_counts(dry_run(finished, snakefile=snakefile)) == {}  # same code, other place: nothing to do
    with (repo_copy / "src/sftdpo" / module).open("a") as fh:
        fh.write("\n# an edit\n")
    assert job_counts(dry_run(finished, snakefile=snakefile)) == expected


def test_target_builds_only_what_it_needs(tmp_path):
    out = snakemake("-n", "results/sft/model", "--configfile", TINY, cwd=tmp_path).stdout
    assert job_counts(out) == jobs(
        "base_model",
        "problems",
        "collect",
        "merge_demos",
        "validate_shard",
        "validate",
        "convert_shard",
        "convert",
        "split",
        "sft",
    )


def test_forcerun_dpo_reruns_dpo_and_dependants_only(finished):
    assert job_counts(dry_run(finished, "--forcerun", "dpo")) == AFTER_DPO


def test_deleted_rollout_shard_is_rebuilt_with_its_dependants(finished):
    shard = finished / "results/rollouts/shards/1.parquet"
    before = read_parquet(shard)
    shard.unlink()
    out = dry_run(finished)
    assert job_counts(out) == {**AFTER_ROLLOUTS, "rollouts": 1} and "shard=1" in out and "shard=0" not in out
    snakemake("-c2", "--configfile", TINY, cwd=finished)
    assert read_parquet(shard).equals(before)
    assert job_counts(dry_run(finished)) == {}


DATA_ARTIFACTS = [
    "demos/demos.parquet",
    "demos/validated.parquet",
    "demos/rejected.parquet",
    "data/chat.parquet",
    "data/tokens.h5",
    "data/train.parquet",
    "data/val.parquet",
    "data/test.parquet",
    "rollouts/rollouts.parquet",
    "prefs/pairs.parquet",
    "eval/base.parquet",
    "eval/sft.parquet",
    "eval/dpo.parquet",
]


def test_same_config_and_seed_give_identical_artifacts(tiny_run, tmp_path):
    snakemake("-c2", "--configfile", TINY, cwd=tmp_path)
    for name in DATA_ARTIFACTS:
        assert filecmp.cmp(tiny_run[0] / "results" / name, tmp_path / "results" / name, shallow=False), name
        # and their lineage sidecars (no timestamps: an identical rerun writes identical bytes)
        side = sidecar_path(tiny_run[0] / "results" / name).relative_to(tiny_run[0])
        assert filecmp.cmp(tiny_run[0] / side, tmp_path / side, shallow=False), side
    for model in ("base/model", "sft/model", "dpo/adapter"):
        assert filecmp.cmp(
            tiny_run[0] / "results" / model / "lineage.json", tmp_path / "results" / model / "lineage.json"
        )


def test_dpo_variants_share_upstream_and_rerun_alone(finished):
    """dpo.variants: each variant is its own DPO job on the shared SFT model and pairs, evaluated on val
    and test; the report calls the run with the best val accuracy "DPO"; adding or changing a variant
    schedules only that variant's jobs (and the report)."""
    variant_jobs = {"dpo_variant": 1, "evaluate": 1, "evaluate_val": 1, "report": 1, "all": 1}

    def overlay(name, variants):
        (finished / name).write_text(yaml.safe_dump({"dpo": {"variants": variants}}))
        return name

    one = overlay("one.yaml", {"lr": {"train": {"learning_rate": 5.0e-4}}})
    out = dry_run(finished, one)
    assert job_counts(out) == variant_jobs
    assert "variant=lr" in out and "stage=dpo-lr" in out and "stage=sft" not in out
    snakemake("-c2", "--configfile", TINY, finished / one, cwd=finished)
    metrics = json.loads((finished / "results/dpo/lr/metrics.json").read_text())
    assert metrics["train"]["learning_rate"] == 5.0e-4 and metrics["train"]["max_steps"] == 10  # the rest: tiny's
    summary = json.loads((finished / "results/report/summary.json").read_text())
    selection = summary["selection"]
    assert list(selection["runs"]) == ["dpo", "dpo-lr"]
    best = max(selection["runs"], key=lambda run: selection["runs"][run]["val"]["accuracy"])
    assert selection["selected"] == best == summary["stages"]["dpo"]["run"]
    chosen = read_parquet(finished / f"results/eval/{best}.parquet")
    assert summary["stages"]["dpo"]["accuracy"] == pytest.approx(chosen["correct"].mean())
    val = read_parquet(finished / "results/eval/val/dpo-lr.parquet")
    assert len(val) == len(read_parquet(finished / "results/data/val.parquet"))
    assert "## DPO runs, selected on val" in (finished / "results/report/report.md").read_text()
    assert job_counts(dry_run(finished, one)) == {}
    # Changing the variant reruns it alone; adding a second runs only the second.
    assert job_counts(dry_run(finished, overlay("changed.yaml", {"lr": {"train": {"learning_rate": 4.0e-4}}}))) == (
        variant_jobs
    )
    two = overlay("two.yaml", {"lr": {"train": {"learning_rate": 5.0e-4}}, "seed1": {"seed": 1}})
    out = dry_run(finished, two)
    assert job_counts(out) == variant_jobs and "variant=seed1" in out and "variant=lr" not in out


def test_dpo_rounds_sample_from_and_start_at_the_previous_round(finished):
    """dpo.rounds: 2 adds round 2 (rollouts from round 1's model, its own pairs, DPO from round 1's model),
    as file targets beside round 1's, evaluated and shown by round; nothing upstream reruns."""
    (finished / "rounds.yaml").write_text(yaml.safe_dump({"dpo": {"rounds": 2}}))
    out = dry_run(finished, "rounds.yaml")
    round_jobs = {"rollouts_round": 2, "merge_rollouts_round": 1, "preferences_round": 1, "dpo_round": 1}
    assert job_counts(out) == {**round_jobs, "evaluate": 1, "evaluate_val": 1, "report": 1, "all": 1}
    snakemake("-c2", "--configfile", TINY, finished / "rounds.yaml", cwd=finished)
    results = finished / "results"
    first, second = (
        read_parquet(results / "rollouts/rollouts.parquet"),
        read_parquet(results / "rollouts/round2/rollouts.parquet"),
    )
    assert len(second) == len(first) and set(second["prompt_id"]) == set(first["prompt_id"])
    assert not second["completion"].equals(first["completion"])  # another model sampled them
    pairs = read_parquet(results / "prefs/round2/pairs.parquet")
    assert len(pairs) > 0 and set(pairs["prompt_id"]) <= set(second["prompt_id"])
    metrics = json.loads((results / "dpo/round2/metrics.json").read_text())
    assert metrics["start_model"] == "results/dpo/adapter" and metrics["n_pairs"] == (pairs["split"] == "train").sum()
    assert json.loads((results / "dpo/metrics.json").read_text())["start_model"] == "results/sft/model"
    summary = json.loads((results / "report/summary.json").read_text())
    by_round = summary["selection"]["by_round"]
    assert [(r["round"], r["stage"]) for r in by_round] == [(1, "dpo"), (2, "dpo-round2")]
    test2 = read_parquet(results / "eval/dpo-round2.parquet")
    assert by_round[1]["test"] == pytest.approx(test2["correct"].mean())
    assert "Accuracy by DPO round" in (results / "report/report.md").read_text()
