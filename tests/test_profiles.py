"""`snakemake --profile slurm` as typed, from a fresh clone's project directory (issue 17).

Fast dry runs (no cluster needed: a dry run submits nothing). tests/test_slurm.py runs the same
command on the test cluster and compares what Slurm saw in sacct.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import GPU_RULES, ROOT, STAGE_OF_RULE, scontrol_ping, user_env

SNAKEMAKE = ".venv/bin/snakemake"  # what the README's set-up installs in the project
SLURM_ENV = {"SFTDPO_CPU_PARTITION": "cpu", "SFTDPO_GPU_PARTITION": "gpu"}
OVERLAY = "tests/slurm/overlay.yaml"
# Keys profiles/default may set: output and rerun options only. Anything that sizes or places
# a job (cores, max-threads, resources, default-resources, set-resources, set-threads, ...)
# would be applied on top of `--profile slurm` too and change what Slurm is asked for.
DEFAULT_PROFILE_KEYS = {"printshellcmds", "show-failed-logs", "rerun-incomplete", "quiet", "verbose"}


def run(project: Path, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run(
        [SNAKEMAKE, *args], cwd=project, capture_output=True, text=True, timeout=300, env=user_env(env, project)
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{SNAKEMAKE} {' '.join(args)} exited {proc.returncode}:\n{out[-6000:]}"
    return out


def planned_jobs(output: str) -> dict[tuple[str, str], dict[str, str]]:
    """Each job of a dry run's listing: (rule, wildcards) -> its threads and resources."""
    jobs = {}
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", output, re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", m.group(2), re.M))
        key = (m.group(1), fields.get("wildcards", ""))
        assert key not in jobs, f"two jobs {key}"
        jobs[key] = {"threads": fields.get("threads", "1"), "resources": resources(fields["resources"])}
    return jobs


def resources(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split(", "))


def test_slurm_is_a_committed_relative_link_to_profiles_slurm(project):
    link = project / "slurm"
    assert link.is_symlink() and os.readlink(link) == "profiles/slurm"
    assert (link / "config.yaml").resolve() == (project / "profiles/slurm/config.yaml").resolve()
    mode = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-s", "slurm"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert mode[:1] == ["120000"], f"slurm is not committed as a symlink: {mode}"


def test_profile_slurm_by_name_dry_run(project):
    """The literal `snakemake --profile slurm -n`: the project's profile and the workflow
    profile, every job planned, GPU rules placed in the GPU partition."""
    out = run(project, "--profile", "slurm", "-n")
    assert (
        "Using profile slurm and workflow specific profile profiles/default" in out
        or "Using profiles slurm and workflow specific profile profiles/default" in out
    ), out[:2000]
    jobs = planned_jobs(out)
    assert {rule for rule, _ in jobs} >= GPU_RULES | {"base_model", "collect", "report"}
    for (rule, wildcards), job in jobs.items():
        res = job["resources"]
        if rule in GPU_RULES:
            assert res["slurm_partition"] == "gpu" and res["gpu"] == "1", (rule, wildcards, res)
        else:
            assert "slurm_partition" not in res and "gpu" not in res, (rule, wildcards, res)
            assert res["mem_mb"] == "4000" and res["runtime"] == "60", (rule, res)


def test_workflow_profile_changes_no_resources(project):
    """Every job's threads and resources are the same with and without profiles/default,
    for the profile alone and with the test cluster's site file layered on it."""
    for extra in ([], ["--profile", OVERLAY]):
        args = ["--profile", "slurm", *extra, "--configfile", "tests/config/tiny.yaml", "-n"]
        with_default = planned_jobs(run(project, *args, env=SLURM_ENV))
        without = planned_jobs(run(project, *args, "--workflow-profile", "none", env=SLURM_ENV))
        assert with_default and with_default == without


def test_default_profile_holds_no_resource_keys():
    """profiles/default is applied on top of every --profile run from the project directory:
    only output and rerun options, and none that contradicts the Slurm profile."""
    default = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert set(default) <= DEFAULT_PROFILE_KEYS, set(default) - DEFAULT_PROFILE_KEYS
    slurm = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    for key, value in default.items():
        assert slurm.get(key, value) == value, f"profiles/default {key}={value!r} overrides the Slurm profile"


def test_site_file_layers_on_the_profile(project):
    """A site file as a second --profile: its scalars apply, the profile's default-resources
    (partition from SFTDPO_CPU_PARTITION, sizes) survive because the site file has none."""
    overlay = yaml.safe_load((ROOT / OVERLAY).read_text())
    assert not {"default-resources", "set-resources", "resources"} & set(overlay)
    out = run(
        project,
        "--profile",
        "slurm",
        "--profile",
        OVERLAY,
        "--configfile",
        "tests/config/tiny.yaml",
        "-n",
        env=SLURM_ENV,
    )
    assert f"Using profiles slurm and {OVERLAY}" in out
    tiny = yaml.safe_load((ROOT / "tests/config/tiny.yaml").read_text())
    for (rule, _), job in planned_jobs(out).items():
        res = job["resources"]
        if rule in GPU_RULES:
            assert res["slurm_partition"] == "gpu", (rule, res)
            assert res["mem_mb"] == str(tiny[STAGE_OF_RULE.get(rule, rule)]["resources"]["mem_mb"]), (rule, res)
        else:
            assert res["slurm_partition"] == "cpu" and res["mem_mb"] == "4000", (rule, res)


def test_slurm_controller_answers_while_the_suite_runs():
    """conftest.slurm_controller_answers started the test cluster if Slurm's client is installed: else every
    snakemake call of the suite waits ~9 s in the Slurm plugin's `scontrol show config` (README, "Testing the
    profile")."""
    ping = scontrol_ping()
    if ping is None or os.geteuid() != 0:
        pytest.skip("Slurm's client is not installed, or not root: the suite does not start the test cluster")
    assert ping.returncode == 0, f"no Slurm controller answers during the suite:\n{ping.stdout}{ping.stderr}"
