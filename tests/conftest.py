import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = ROOT / "tests" / "config" / "tiny.yaml"


def snakemake(*args, cwd, check=True, timeout=1800, env=None):
    """Run the snakemake CLI on this repo's Snakefile in `cwd`; returns the CompletedProcess."""
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the "Job stats" table of `snakemake -n` ({} when nothing is to be done)."""
    if "Job stats:" not in output:
        return {}
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole DAG on the tiny test config, run once through the snakemake CLI."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    proc = snakemake("-c2", "--configfile", TINY, cwd=workdir)
    return workdir, proc


def user_env(extra: dict | None = None, project: Path | None = None) -> dict:
    """The environment of a user after the README's set-up: the project's .venv/bin first on
    PATH, no SFTDPO_* settings left over from the caller. With `project` (a copy of this
    repository), its src/ comes first on PYTHONPATH, as the set-up's editable install of that
    clone would have it (the environment running the tests may have been installed elsewhere)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFTDPO_")}
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    if project is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project / "src"), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """A fresh clone of this working tree after the README's set-up (`.venv` linked to the
    environment running the tests), with shared/ beside it as in CI (the GSM8K example's
    ../shared/datasets paths)."""
    from doc_commands import copy_project

    base = tmp_path_factory.mktemp("clone")
    if (ROOT.parent / "shared").exists():
        (base / "shared").symlink_to(ROOT.parent / "shared")
    return copy_project(base / "sftdpo")
