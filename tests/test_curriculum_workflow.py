"""Issue 12 through the snakemake CLI: a curriculum whose advances are always rolled back (a forced drop), its
curriculum.json and TensorBoard run; and kill -9 mid-curriculum, then the same state and sampling order."""

import json
import shutil

import pytest
import yaml

from conftest import TINY, snakemake
from test_resume import kill_when, resume, start

pytestmark = pytest.mark.e2e

# rollback_threshold -1 demands a gain of 100 points after an advance: every advance is rolled back, whatever the
# model learns, so the run's events are known in advance. Checks every 50 of 200 steps.
FORCED_DROP = {
    "sft": {
        "curriculum": {
            "stages": [
                {"name": "simple", "difficulty_mix": {"1": 1.0}},
                {"name": "mixed", "difficulty_mix": {"1": 0.4, "2": 0.4, "3": 0.2}},
            ],
            "advancement_interval": 50,
            "min_performance_for_advance": 0.0,
            "rollback_threshold": -1.0,
            "rollback_cooldown": 0,
            "rollback_factor": 1.0,
            "eval_items": 24,
        },
        "train": {"report_to": "tensorboard", "max_steps": 200},
    }
}
TARGET = "results/sft/curriculum.json"


@pytest.fixture(scope="module")
def curriculum_run(tiny_run, tmp_path_factory):
    """The finished tiny run, SFT retrained with the forced-drop curriculum (only sft reruns)."""
    workdir = tmp_path_factory.mktemp("curriculum") / "run"
    shutil.copytree(tiny_run[0], workdir, symlinks=True)
    (workdir / "curriculum.yaml").write_text(yaml.safe_dump(FORCED_DROP))
    dry = snakemake("-n", TARGET, "--configfile", TINY, "curriculum.yaml", cwd=workdir).stdout
    assert "sft" in dry and "collect" not in dry  # a curriculum changes SFT's params only
    snakemake("-c1", TARGET, "--configfile", TINY, "curriculum.yaml", cwd=workdir)
    return workdir


def plan(report):
    """What decides the train order: every check's outcome and the sampler's weight schedule."""
    return [(e["step"], e["action"], e["stage"]) for e in report["events"]], report["sampler"]


def test_forced_drop_rolls_back_and_is_recorded(curriculum_run):
    report = json.loads((curriculum_run / TARGET).read_text())
    events, schedule = plan(report)
    assert events == [(50, "advance", "mixed"), (100, "rollback", "simple"), (150, "advance", "mixed"),
                      (200, "rollback", "simple")]  # fmt: skip
    for advance, rollback in zip(report["events"][::2], report["events"][1::2]):
        assert rollback["performance_before"] == advance["performance"]
        assert rollback["delta"] == pytest.approx(rollback["performance_after"] - advance["performance"])
        assert rollback["reason"] == "drop too large" and rollback["eval_seconds"] > 0
    assert report["rollbacks"] == 2 and report["final_stage"] == "simple" and report["final_weights"] == {"1": 1.0}
    assert [position for position, _ in schedule["changes"]][0] == 0 and len(schedule["changes"]) == 5
    seen = report["samples_per_difficulty"]
    assert sum(seen.values()) == 200 * 32 and seen["1"] > seen["2"] + seen["3"]  # simple for half the steps
    metrics = json.loads((curriculum_run / "results/sft/metrics.json").read_text())
    assert metrics["curriculum"]["rollbacks"] == 2
    boards = list((curriculum_run / "logs/tracking").glob(f"{metrics['run_name']}/events.out.tfevents.*"))
    assert boards, "no TensorBoard event file under logs/tracking/<run name>/"


def test_killed_mid_curriculum_resumes_with_the_same_state_and_order(curriculum_run, tmp_path):
    uninterrupted = json.loads((curriculum_run / TARGET).read_text())
    workdir = tmp_path / "run"
    shutil.copytree(curriculum_run, workdir, symlinks=True)
    proc = start(workdir, TARGET, workdir / "curriculum.yaml", "--forcerun", "sft")
    kill_when(proc, lambda: any((workdir / "work/sft").glob("*/checkpoint-100/trainer_state.json")))
    saved = json.loads(next((workdir / "work/sft").glob("*/checkpoint-100/trainer_state.json")).read_text())
    state = saved["stateful_callbacks"]["CurriculumCallback"]["attributes"]["curriculum"]
    assert [e["action"] for e in state["events"]] == ["advance", "rollback"]  # killed between checks
    resume(workdir, TARGET, workdir / "curriculum.yaml")
    resumed = json.loads((workdir / TARGET).read_text())
    assert plan(resumed) == plan(uninterrupted)
    assert resumed["samples_per_difficulty"] == uninterrupted["samples_per_difficulty"]
    metrics = json.loads((workdir / "results/sft/metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-100") and metrics["global_step"] == 200
    assert "curriculum resumed at step 100" in (workdir / "logs/sft.log").read_text()
