"""Issue 4: kill -9 a running job, rerun, and nothing is lost or repeated; training resumes from its
last checkpoint. Progress lives in work/, outside Snakemake's declared outputs."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, TINY, TINY_SFT_STEPS, snakemake
from sftdpo.io import read_parquet

pytestmark = pytest.mark.e2e


def start(workdir, target, *configfiles, env=None):
    """Start snakemake for one target in its own process group."""
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-c1", target, "--configfile", str(TINY), *map(str, configfiles)]
    return subprocess.Popen(
        cmd,
        cwd=workdir,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def kill_when(proc, condition, timeout=300):
    """SIGKILL the whole process group as soon as condition() holds; fail if the job ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        assert proc.poll() is None, "the job finished before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("condition never held")


def progress_lines(workdir, stage, shard):
    files = list((workdir / "work" / stage).glob(f"*/{shard}.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines(keepends=True) if line.endswith("\n")]


def resume(workdir, target, *configfiles):
    snakemake("--unlock", cwd=workdir)  # kill -9 left Snakemake's lock behind
    snakemake("-c1", target, "--configfile", TINY, *configfiles, "--rerun-incomplete", cwd=workdir)


def test_collect_killed_mid_shard_keeps_rows_and_repeats_none(tmp_path):
    overlay = tmp_path / "more.yaml"
    overlay.write_text(yaml.safe_dump({"task": {"n_problems": 400}, "collect": {"flush_every": 10}}))
    target = "results/demos/shards/0.parquet"
    proc = start(tmp_path, target, overlay, env={"SFTDPO_TEST_FLUSH_DELAY": "0.3"})
    kill_when(proc, lambda: len(progress_lines(tmp_path, "collect", 0)) >= 30)
    before = progress_lines(tmp_path, "collect", 0)
    assert 30 <= len(before) < 200 and not (tmp_path / target).exists()
    resume(tmp_path, target, overlay)
    shard = read_parquet(tmp_path / target)
    assert shard["id"].tolist() == [f"arithmetic-{i:06d}" for i in range(0, 400, 2)]  # every id once, in order
    rows = shard.set_index("id")
    for row in before:
        assert rows.loc[row["id"], "completion"] == row["completion"]
    log = (tmp_path / "logs/collect/0.log").read_text()
    assert f"200 problems, {len(before)} already done" in log


def test_rollouts_killed_mid_shard_keeps_samples_and_repeats_none(finished):
    target = "results/rollouts/shards/0.parquet"
    complete = read_parquet(finished / target)
    (finished / target).unlink()
    for f in (finished / "work/rollouts").glob("*/0.jsonl"):
        f.unlink()
    proc = start(finished, target, env={"SFTDPO_TEST_FLUSH_DELAY": "2"})
    kill_when(proc, lambda: len(progress_lines(finished, "rollouts", 0)) >= 32)
    before = progress_lines(finished, "rollouts", 0)
    # Shard 0: half of the 40 train and 16 val prompts, k=4 -> 112 rows; killed after the first batches.
    assert 32 <= len(before) < 112 and not (finished / target).exists()
    resume(finished, target)
    shard = read_parquet(finished / target)
    assert shard["id"].is_unique and len(shard) == 28 * 4
    kept = shard.set_index("id")
    for row in before:
        assert kept.loc[row["id"], "completion"] == row["completion"]
    # Chunks are reseeded from their position, so the resumed shard equals the uninterrupted one.
    assert shard.drop(columns=["model"]).equals(complete.drop(columns=["model"]))
    assert "to do" in (finished / "logs/rollouts/0.log").read_text()


@pytest.mark.parametrize(
    "stage, target, overlay, save_steps, max_steps",
    [
        ("sft", "results/sft/model", {}, 100, TINY_SFT_STEPS),
        ("dpo", "results/dpo/adapter", {"dpo": {"train": {"max_steps": 40, "save_steps": 10}}}, 10, 40),
    ],
)
def test_training_killed_after_a_checkpoint_resumes_from_it(
    finished,
    stage,
    target,
    overlay,
    save_steps,
    max_steps,
):
    (finished / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    uninterrupted = json.loads((finished / f"results/{stage}/metrics.json").read_text())  # the tiny run's
    proc = start(finished, target, "overlay.yaml", "--forcerun", stage)

    def checkpointed():
        return any((finished / "work" / stage).glob(f"*/checkpoint-{save_steps}/trainer_state.json"))

    kill_when(proc, checkpointed)
    assert not (finished / target).exists()  # Snakemake removed it before the job; never half-written
    resume(finished, target, "overlay.yaml")
    metrics = json.loads((finished / f"results/{stage}/metrics.json").read_text())
    step = int(metrics["resumed_from"].rpartition("-")[2])
    assert step >= save_steps and step % save_steps == 0
    assert metrics["global_step"] == max_steps  # as many steps as an uninterrupted run
    logged = [h["step"] for h in metrics["log_history"] if "loss" in h]
    assert logged == sorted(set(logged)) and logged[-1] == max_steps  # history continued, no restart at 0
    if not overlay:
        # The same losses as the uninterrupted run, the first log after the resume included: checkpoints fall on
        # logging steps (config_checks.checkpoint_problems), so no partial loss sum is lost with the process.
        def losses(m):
            return [(h["step"], h["loss"]) for h in m["log_history"] if "loss" in h]

        assert losses(metrics) == losses(uninterrupted)
    assert f"resuming from work/{stage}/" in (finished / f"logs/{stage}.log").read_text()
    assert not list((finished / "work" / stage).glob("*/checkpoint-*"))  # cleaned after success
