import os
import re
import shutil
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
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
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


@pytest.fixture
def finished(tiny_run, tmp_path):
    """A private copy of the finished tiny run (outputs, mtimes and Snakemake's metadata)."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run[0], workdir, symlinks=True)
    return workdir
