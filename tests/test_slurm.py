"""`snakemake --profile slurm` on a real Slurm cluster (issues 3 and 17).

tests/slurm/start-cluster.sh brings up a one-node Slurm (partitions cpu and
gpu, one fake GPU, slurmdbd so that sacct works, QOS guard refusing GPU jobs
in partition cpu).  In a fresh copy of the project (as a clone after the
README's set-up), the tiny pipeline config then runs through the literal

    snakemake --profile slurm --profile tests/slurm/overlay.yaml --configfile tests/config/tiny.yaml

(the test cluster's site file layered as a second profile, the workflow
profile profiles/default applied by Snakemake as for any user), and sacct
tells where each job ran and with what resources.  Fault injection (SFTDPO_FAIL_ONCE / SFTDPO_FAIL_ALWAYS, read by
src/sftdpo/runner.py inside the jobs: sbatch exports the environment) checks
retries and the error report.

Outside CI the cluster tests are skipped when not root or when apt cannot
install Slurm; with CI=true that is a failure.  Each Slurm job costs ~5-15 s of
submission and polling, so the full run takes a few minutes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import (
    GPU_RULES,
    OPTIONAL_GPU_RULES,
    RULES,
    SLURM_TESTS,
    STAGE_OF_RULE,
    start_slurm_test_cluster,
    user_env,
)
from doc_commands import copy_project, documented_commands
from sftdpo.io import content_digest

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
TINY = ROOT / "tests" / "config" / "tiny.yaml"
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
OVERLAY = SLURM_TESTS / "overlay.yaml"
# The command as a user types it in the project directory (README), before per-test options.
COMMAND = [
    ".venv/bin/snakemake",
    "--profile",
    "slurm",
    "--profile",
    "tests/slurm/overlay.yaml",
    "--configfile",
    "tests/config/tiny.yaml",
]

CPU_RULES = set(RULES) - GPU_RULES - {"all"}
LOCAL_RULES = {"merge_demos", "merge_rollouts"}  # Snakefile `localrules`
# What a user of the profile sets for this cluster (see profiles/slurm/config.yaml).
CLUSTER_ENV = {"SFTDPO_CPU_PARTITION": "cpu", "SFTDPO_GPU_PARTITION": "gpu"}

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
RUN_TIMEOUT = 1200  # the whole tiny DAG through Slurm, ~3-5 min here
SHORT_TIMEOUT = 300  # a forced re-run of one rule
# Forced re-runs of one rule in a copy of the finished run rebuild nothing else, even if
# code or config changed meanwhile (params carry code fingerprints): only mtimes count.
ONLY_FORCED = ("--rerun-triggers", "mtime")


# ---------------------------------------------------------------- helpers
def _tail(text: str, n: int = 6000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


@dataclass
class Run:
    workdir: Path
    returncode: int
    output: str  # snakemake's stdout + stderr
    run_ids: list[str]  # "SLURM run ID" = the sbatch --job-name of its jobs
    started: dt.datetime


@dataclass
class SlurmJob:
    jobid: int
    rule: str
    wildcards: str
    partition: str
    alloc_tres: str
    req_tres: str
    timelimit: str
    state: str

    @property
    def seen_by_slurm(self) -> tuple[str, str, str, str]:
        """What the job asked Slurm for and got: partition, requested and allocated TRES, time limit."""
        return self.partition, self.req_tres, self.alloc_tres, self.timelimit


def run_snakemake(
    workdir: Path, *args: str, env: dict | None = None, timeout: int = RUN_TIMEOUT, name: str = "run"
) -> Run:
    """COMMAND (+ args) in the project copy `workdir`, as a user runs it there, under `timeout -k`;
    the cluster's partitions come from the environment (CLUSTER_ENV), as a user sets them."""
    full_env = user_env({**CLUSTER_ENV, **(env or {})}, workdir)
    cmd = ["timeout", "-k", "10", str(timeout), *COMMAND, *args]
    log_path = workdir.parent / f"{workdir.name}.{name}.snakemake.out"
    started = dt.datetime.now() - dt.timedelta(seconds=5)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(
            cmd,
            cwd=workdir,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout + 60,
        )
    output = log_path.read_text()
    run_ids = re.findall(r"SLURM run ID: (\S+)", output)
    return Run(workdir, proc.returncode, output, run_ids, started)


def sacct_jobs(run: Run) -> list[SlurmJob]:
    """The run's Slurm jobs (allocations only), by job id; rule from the plugin's --comment."""
    if not run.run_ids:
        return []
    out = subprocess.run(
        [
            "sacct",
            "-X",
            "-P",
            "-n",
            "-S",
            run.started.strftime("%Y-%m-%dT%H:%M:%S"),
            "--name",
            ",".join(run.run_ids),
            "-o",
            "JobID,JobName,Partition,AllocTRES,ReqTRES,Timelimit,State,Comment",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    jobs = []
    for line in out.splitlines():
        jobid, _name, partition, tres, req_tres, timelimit, state, comment = line.split("|", 7)
        # snakemake-executor-plugin-slurm: --comment rule_<rule>[_wildcards_<wildcards>]
        m = re.fullmatch(r"rule_(.+?)(?:_wildcards_(.*))?", comment)
        assert m, f"job {jobid}: unexpected comment {comment!r}"
        jobs.append(
            SlurmJob(int(jobid), m.group(1), m.group(2) or "", partition, tres, req_tres, timelimit, state.split()[0])
        )
    return sorted(jobs, key=lambda j: j.jobid)


def sacct_table(jobs: list[SlurmJob]) -> str:
    rows = [f"{'job':>6}  {'rule':<15} {'wildcards':<10} {'partition':<9} {'state':<10} {'timelimit':<9} alloc_tres"]
    rows += [
        f"{j.jobid:>6}  {j.rule:<15} {j.wildcards:<10} {j.partition:<9} {j.state:<10} {j.timelimit:<9} {j.alloc_tres}"
        for j in jobs
    ]
    return "\n".join(rows)


def job_stats(output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table (first one) of a run's output: rule -> job count."""
    block = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.M)}


def copy_workdir(src: Path, dst: Path) -> Path:
    """A copy of a finished run's project directory (mtimes kept, so Snakemake sees it up to
    date; the .venv link kept), without the run's own Slurm and Snakemake logs."""

    def ignore(directory, names):
        return {"slurm_logs", "log", "locks"} & set(names) if Path(directory) == src / ".snakemake" else set()

    shutil.copytree(src, dst, symlinks=True, ignore=ignore)
    return dst


def describe_failure(run: Run) -> str:
    jobs = sacct_jobs(run)
    logs = []
    for path in sorted((run.workdir / ".snakemake" / "slurm_logs").rglob("*.log"))[-3:]:
        logs.append(f"--- {path}\n{_tail(path.read_text(errors='replace'), 2000)}")
    return (
        f"snakemake exited {run.returncode} in {run.workdir}\n{_tail(run.output)}\n"
        f"--- sacct\n{sacct_table(jobs)}\n" + "\n".join(logs)
    )


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Start (or re-check) the test cluster with tests/slurm/start-cluster.sh."""
    log_path = tmp_path_factory.mktemp("slurm_cluster") / "start-cluster.out"
    rc = start_slurm_test_cluster(log_path)
    output = log_path.read_text()
    if rc == 0:
        return output
    reason = {2: "not root", 3: "apt cannot install the Slurm packages"}.get(rc)
    if reason and not IN_CI:
        pytest.skip(f"no Slurm test cluster: {reason} (tests/slurm/start-cluster.sh exit {rc})")
    pytest.fail(
        f"tests/slurm/start-cluster.sh failed (exit {rc}){' in CI' if IN_CI else ''}:\n{_tail(output)}", pytrace=False
    )


@pytest.fixture(scope="session")
def slurm_run(slurm_cluster, tmp_path_factory) -> Run:
    """The whole tiny DAG on Slurm through COMMAND in a fresh copy of the project, `report`
    failing on its first attempt (SFTDPO_FAIL_ONCE)."""
    base = tmp_path_factory.mktemp("slurm_run")
    workdir = copy_project(base / "sftdpo")
    marker = base / "report.failed-once"
    run = run_snakemake(workdir, env={"SFTDPO_FAIL_ONCE": f"report:{marker}"}, name="full")
    try:
        assert run.returncode == 0, describe_failure(run)
        # The profiles a user gets: the project's by name, the site file, the workflow profile.
        assert (
            "Using profiles slurm and tests/slurm/overlay.yaml and workflow specific profile profiles/default"
        ) in run.output, _tail(run.output)
        yield run
    finally:
        _cancel(run)


def minutes(n: int) -> str:
    """sacct's Timelimit for n minutes (under a day)."""
    return f"{n // 60:02d}:{n % 60:02d}:00"


def _cancel(run: Run) -> None:
    """Leave no job of the run behind (snakemake killed by the timeout, say)."""
    for run_id in run.run_ids:
        subprocess.run(["scancel", "--name", run_id], capture_output=True, timeout=60)


# ---------------------------------------------------------------- tests
def test_profile_takes_cluster_values_from_environment(monkeypatch):
    """Partition, account and GPU model come from SFTDPO_* variables, with defaults."""
    from snakemake.profiles import ProfileConfigFileParser

    def load(**env):
        for key in ("SFTDPO_CPU_PARTITION", "SFTDPO_GPU_PARTITION", "SFTDPO_SLURM_ACCOUNT", "SFTDPO_GPU_MODEL"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with open(PROFILE) as stream:
            return ProfileConfigFileParser().parse(stream)

    unset = load()
    assert unset["executor"] == "slurm"
    assert not any(r.startswith(("slurm_partition", "slurm_account")) for r in unset["default-resources"])
    for rule in GPU_RULES | OPTIONAL_GPU_RULES:
        assert f"{rule}:slurm_partition=gpu" in unset["set-resources"]
        assert not any(r.startswith(f"{rule}:gpu_model") for r in unset["set-resources"])

    set_ = load(
        SFTDPO_CPU_PARTITION="short",
        SFTDPO_GPU_PARTITION="gpu-a100",
        SFTDPO_SLURM_ACCOUNT="proj42",
        SFTDPO_GPU_MODEL="a100",
    )
    assert "slurm_partition=short" in set_["default-resources"]
    assert "slurm_account=proj42" in set_["default-resources"]
    for rule in GPU_RULES | OPTIONAL_GPU_RULES:
        assert f"{rule}:slurm_partition=gpu-a100" in set_["set-resources"]
        assert f"{rule}:gpu_model=a100" in set_["set-resources"]
    # Placement is the profile's business only: not in the rules, config/ or the test overlay.
    for path in [SNAKEFILE, OVERLAY, *(ROOT / "rules").glob("*.smk"), *(ROOT / "config").rglob("*.yaml")]:
        text = path.read_text()
        for key in ("slurm_partition", "slurm_account", "gpu_model"):
            assert key not in text, f"{key} in {path.relative_to(ROOT)}"


def test_jobs_ran_in_the_right_partition(slurm_run):
    """GPU rules in partition gpu with one GPU, every other rule in cpu without one."""
    jobs = sacct_jobs(slurm_run)
    table = sacct_table(jobs)
    print(table)
    planned = {rule: n for rule, n in job_stats(slurm_run.output).items() if rule != "all"}
    # The merges are `localrules` (a second of pandas each): they run on the submitting node, not in Slurm.
    expected = {rule: n for rule, n in planned.items() if rule not in LOCAL_RULES}
    assert {rule for rule in planned if rule in LOCAL_RULES} == LOCAL_RULES, planned
    for path in ("results/demos/demos.parquet", "results/rollouts/rollouts.parquet"):
        assert (slurm_run.workdir / path).exists(), path
    completed = {}
    for job in jobs:
        if job.state == "COMPLETED":
            completed[job.rule] = completed.get(job.rule, 0) + 1
    assert completed == expected, f"COMPLETED jobs per rule differ from the DAG:\n{table}"
    assert set(planned) == GPU_RULES | CPU_RULES, f"rule names changed? {sorted(planned)}"
    for job in jobs:
        if job.rule in GPU_RULES:
            assert job.partition == "gpu" and "gres/gpu=1" in job.alloc_tres.split(","), table
        else:
            assert job.partition == "cpu" and "gres/gpu" not in job.alloc_tres, table
    evaluated = {j.wildcards for j in jobs if j.rule == "evaluate" and j.state == "COMPLETED"}
    assert evaluated == {"base", "sft", "dpo"}, table
    # GPU jobs are sized by the config (`<stage>.resources`), CPU jobs by the profile's
    # default-resources (the site file, a second profile, leaves them alone).
    tiny = yaml.safe_load(TINY.read_text())
    max_threads = yaml.safe_load(OVERLAY.read_text())["max-threads"]
    defaults = yaml.safe_load(PROFILE.read_text())["default-resources"]
    for job in jobs:
        tres = dict(item.split("=", 1) for item in job.alloc_tres.split(","))
        size = (
            tiny[STAGE_OF_RULE.get(job.rule, job.rule)]["resources"]
            if job.rule in GPU_RULES
            else {**defaults, "threads": 1}
        )
        assert tres["mem"] == f"{size['mem_mb']}M", table
        assert tres["cpu"] == str(min(size["threads"], max_threads)), table
        assert job.timelimit == minutes(size["runtime"]), table


def test_sharded_data_stages_on_slurm_make_the_data_of_a_local_run(slurm_run):
    """The data stages ran as Slurm jobs, 2 collect, 2 validate_shard and 2 convert_shard among them: their tables
    and tokens have the content the local tiny run records (tests/config/data_digests.json)."""
    from test_data_identity import DIGESTS

    shards = {j.rule: 0 for j in sacct_jobs(slurm_run)}
    for job in sacct_jobs(slurm_run):
        shards[job.rule] += job.state == "COMPLETED"
    assert (shards["collect"], shards["validate_shard"], shards["convert_shard"]) == (2, 2, 2), shards
    recorded = json.loads(DIGESTS.read_text())
    found = {name: content_digest(slurm_run.workdir / "results" / name) for name in recorded}
    assert found == recorded


def test_summary_has_the_shape_of_a_local_run(slurm_run, request):
    summary = json.loads((slurm_run.workdir / "results" / "report" / "summary.json").read_text())
    assert set(summary["stages"]) == {"base", "sft", "dpo"}
    for stage in summary["stages"].values():
        assert 0.0 <= stage["accuracy"] <= 1.0
        assert isinstance(stage["n"], int) and stage["n"] > 0
        assert stage["by_difficulty"] and all(0.0 <= v <= 1.0 for v in stage["by_difficulty"].values())
    assert set(summary["deltas"]) == {"sft-base", "dpo-sft"}
    for delta in summary["deltas"].values():
        assert isinstance(delta["mean"], float)
        lo, hi = delta["ci95"]
        assert lo <= delta["mean"] <= hi

    # Same keys and types as the local run of tests/conftest.py, when this
    # session runs that one anyway (a full `pytest`); not worth a run of its own.
    if any("tiny_run" in getattr(item, "fixturenames", ()) for item in request.session.items):
        local_workdir, _ = request.getfixturevalue("tiny_run")
        local = json.loads((local_workdir / "results" / "report" / "summary.json").read_text())

        def shape(obj):
            if isinstance(obj, dict):
                return {k: shape(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [shape(v) for v in obj]
            return type(obj).__name__

        for part in ("stages", "deltas"):
            assert shape(summary[part]) == shape(local[part])


def test_retries_recover_from_a_failed_attempt(slurm_run):
    """SFTDPO_FAIL_ONCE=report: the first report job FAILED, the retry COMPLETED the run."""
    reports = [j for j in sacct_jobs(slurm_run) if j.rule == "report"]
    assert [j.state for j in reports] == ["FAILED", "COMPLETED"], sacct_table(reports)
    assert "Error in rule report" in slurm_run.output
    assert "Trying to restart job" in slurm_run.output


def test_scancelled_job_is_retried(slurm_run, tmp_path):
    """Preemption as a scheduler does it: `scancel` of a running GPU job (evaluate, stage base). sacct says
    "CANCELLED by 0", which the Slurm plugin alone took for "still running" and waited for forever; with
    src/sftdpo/slurm_status.py the job fails, the retry COMPLETED it, and the table is the first run's."""
    workdir = copy_workdir(slurm_run.workdir, tmp_path / "work")
    target = "results/eval/base.parquet"
    done = []
    args = ("--forcerun", "evaluate", *ONLY_FORCED, "--retries", "1", target)  # options of many values first
    thread = threading.Thread(
        target=lambda: done.append(run_snakemake(workdir, *args, timeout=SHORT_TIMEOUT, name="scancel"))
    )
    thread.start()
    log = workdir.parent / "work.scancel.snakemake.out"
    cancelled = None
    while thread.is_alive() and cancelled is None:
        time.sleep(0.5)
        run_ids = re.findall(r"SLURM run ID: (\S+)", log.read_text()) if log.exists() else []
        if not run_ids:
            continue
        squeue = ["squeue", "-h", "-t", "RUNNING", "-n", run_ids[0], "-o", "%A|%k"]
        out = subprocess.run(squeue, capture_output=True, text=True).stdout
        for line in out.splitlines():
            jobid, comment = line.split("|")
            if comment == "rule_evaluate_wildcards_base":
                subprocess.run(["scancel", jobid], check=True)
                cancelled = int(jobid)
    thread.join()
    (run,) = done
    try:
        assert cancelled is not None and run.returncode == 0, describe_failure(run)
        jobs = sacct_jobs(run)
        assert [(j.jobid == cancelled, j.rule, j.state) for j in jobs] == [
            (True, "evaluate", "CANCELLED"),
            (False, "evaluate", "COMPLETED"),
        ], sacct_table(jobs)
        assert f"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'" in run.output, _tail(run.output)
        assert content_digest(workdir / target) == content_digest(slurm_run.workdir / target)
    finally:
        _cancel(run)


def test_failing_rule_and_its_slurm_log_are_reported(slurm_run, tmp_path):
    """SFTDPO_FAIL_ALWAYS=report: non-zero exit; the output names the rule and the failed
    job's Slurm log, which holds the error.  `--retries 0` (retries are proven above) saves
    an attempt and the status-check back-off that follows it (~30 s)."""
    workdir = copy_workdir(slurm_run.workdir, tmp_path / "work")
    run = run_snakemake(
        workdir,
        "--forcerun",
        "report",
        "--retries",
        "0",
        *ONLY_FORCED,
        env={"SFTDPO_FAIL_ALWAYS": "report"},
        timeout=SHORT_TIMEOUT,
        name="fail",
    )
    try:
        assert run.returncode not in (0, 124, 137), describe_failure(run)
        jobs = sacct_jobs(run)
        assert [(j.rule, j.state) for j in jobs] == [("report", "FAILED")], sacct_table(jobs)
        assert "Error in rule report" in run.output
        assert "logs/report.log" in run.output  # the rule's own log, with the traceback...
        assert "injected failure in rule report" in run.output  # ...shown (show-failed-logs)
        for job in jobs:
            log = workdir / ".snakemake" / "slurm_logs" / "rule_report" / f"{job.jobid}.log"
            assert str(log) in run.output, f"{log} not named in the output:\n{_tail(run.output)}"
            assert "injected failure in rule report" in log.read_text(errors="replace")
    finally:
        _cancel(run)


def test_gpu_job_sent_to_the_cpu_partition_is_refused(slurm_run, tmp_path):
    """The partition guard (QOS cpuonly) rejects a GPU job at sbatch time, and Snakemake says so."""
    workdir = copy_workdir(slurm_run.workdir, tmp_path / "work")
    run = run_snakemake(
        workdir,
        "--forcerun",
        "evaluate",
        "--until",
        "evaluate",
        *ONLY_FORCED,
        env={"SFTDPO_GPU_PARTITION": "cpu"},
        timeout=SHORT_TIMEOUT,
        name="guard",
    )
    try:
        assert run.returncode not in (0, 124, 137), describe_failure(run)
        assert "Error in rule evaluate" in run.output
        assert "QOSMaxGRESPerJob" in run.output, _tail(run.output)
        assert sacct_jobs(run) == []
    finally:
        _cancel(run)


def test_workflow_profile_changes_nothing_slurm_sees(slurm_run, tmp_path):
    """The same jobs run with `--workflow-profile none` (evaluate x3 on GPU, report on CPU) get
    exactly the partition, requested and allocated TRES and time limit that they got in the
    run above, where Snakemake applied profiles/default on top of the Slurm profile."""
    workdir = copy_workdir(slurm_run.workdir, tmp_path / "work")
    run = run_snakemake(
        workdir,
        "--forcerun",
        "evaluate",
        *ONLY_FORCED,
        "--workflow-profile",
        "none",
        timeout=SHORT_TIMEOUT,
        name="no-workflow-profile",
    )
    try:
        assert run.returncode == 0, describe_failure(run)
        assert "workflow specific profile" not in run.output
        without = sacct_jobs(run)
        with_default = {(j.rule, j.wildcards): j for j in sacct_jobs(slurm_run) if j.state == "COMPLETED"}
        print("with profiles/default:\n" + sacct_table(list(with_default.values())))
        print("with --workflow-profile none:\n" + sacct_table(without))
        assert sorted((j.rule, j.wildcards, j.state) for j in without) == [
            ("evaluate", "base", "COMPLETED"),
            ("evaluate", "dpo", "COMPLETED"),
            ("evaluate", "sft", "COMPLETED"),
            ("report", "", "COMPLETED"),
        ], sacct_table(without)
        for job in without:
            assert job.seen_by_slurm == with_default[(job.rule, job.wildcards)].seen_by_slurm, (
                f"{job.rule} {job.wildcards}: {job.seen_by_slurm} without the workflow profile, "
                f"{with_default[(job.rule, job.wildcards)].seen_by_slurm} with it"
            )
    finally:
        _cancel(run)


def test_documented_slurm_commands_work(slurm_run):
    """The README's squeue / sacct / scancel / tail commands (tests/doc_commands.py, mode
    `slurm`), run in the finished run's project directory with its SLURM run ID."""
    commands = [c for c in documented_commands() if c.mode == "slurm"]
    assert {c.command.split()[0] for c in commands} >= {"squeue", "sacct", "scancel", "tail"}
    for doc in commands:
        script = doc.script({"<SLURM run ID>": slurm_run.run_ids[0]})
        if script.startswith("tail -f"):
            script = f"timeout 3 {script}"  # follows the log forever: stop it after 3 s
        proc = subprocess.run(
            ["bash", "-c", script],
            cwd=slurm_run.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            env=user_env(CLUSTER_ENV, slurm_run.workdir),
        )
        out = proc.stdout + proc.stderr
        if script.startswith("timeout 3 tail -f"):
            assert proc.returncode == 124 and "100%) done" in out, f"$ {script}\n{out[-3000:]}"
            continue
        assert proc.returncode == 0, f"{doc.source}: $ {script}\nexited {proc.returncode}:\n{out[-3000:]}"
        if script.startswith("sacct"):
            assert "rule_evaluate_wildcards_dpo" in out and "gres/gpu=1" in out, out
        if script.startswith("squeue"):
            assert "PARTITION" in out, out
