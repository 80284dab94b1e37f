"""Every command the README, docs/ and the YAML headers show is run here (issue 17).

tests/doc_commands.py extracts them and maps each form to a mode (its RULES table); this file
runs each one in a fresh copy of the project (`.venv` linked as the README's set-up makes it):
dry runs where a command would run jobs, `make -n` where a target installs or recurses into the
test suite. Commands that need the Slurm cluster run in tests/test_slurm.py after its cluster
run; those that need finished results (`--report`, benchmarks/rule_times.py) run on a copy of
the tiny end-to-end run (marker e2e). Everything else is fast (a few seconds a command).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, TINY, user_env
from doc_commands import RULES, documented_commands

COMMANDS = documented_commands()
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
NEEDS_DATA = "config/examples/gsm8k-qwen.yaml"  # its data path: data/gsm8k (conftest.link_gsm8k)
FAST_MODES = {"make-n", "pipe", "conda", "as-is", "dry-run", "collect", "pip-dry", "accelerate", "help", "serve-help"}
NOT_RUN_HERE = {"env", "mention", "slurm", "after-run"}


def bash(project, script: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + script],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=user_env(project=project),
        stdin=subprocess.DEVNULL,
    )


def check(proc: subprocess.CompletedProcess, script: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"$ {script}\nexited {proc.returncode}:\n{out[-6000:]}"
    return out


def params(modes: set[str], marks=()):
    return [pytest.param(c, id=f"{c.source} {c.command[:60]}", marks=list(marks)) for c in COMMANDS if c.mode in modes]


# ---------------------------------------------------------------- the table itself
def test_every_documented_command_has_a_rule():
    """A documented command that no rule of doc_commands.RULES covers is untested: fail."""
    unmatched = [f"{c.source}: {c.command}" for c in COMMANDS if c.mode is None]
    assert not unmatched, "documented commands without a rule in tests/doc_commands.py:\n" + "\n".join(unmatched)
    assert {c.mode for c in COMMANDS} <= FAST_MODES | NOT_RUN_HERE
    assert {mode for _, mode in RULES} <= FAST_MODES | NOT_RUN_HERE


def test_extractor_finds_the_commands_users_type():
    found = {(c.source.split(":")[0], c.command) for c in COMMANDS}
    for expected in [
        ("README.md", "make run"),
        ("README.md", "make test"),
        ("README.md", ".venv/bin/snakemake --profile slurm"),
        ("README.md", ".venv/bin/snakemake -n"),
        (
            "config/examples/gsm8k-qwen.yaml",
            ".venv/bin/snakemake --profile slurm --configfile config/examples/gsm8k-qwen.yaml",
        ),
    ]:
        assert expected in found, f"{expected} not extracted"
    # Every export of a block reaches the commands after it.
    exported = [c for c in COMMANDS if c.exports]
    assert exported and all(c.exports[0].startswith(("export SFTDPO_", "export HF_HOME=")) for c in exported)


# ---------------------------------------------------------------- fast modes
@pytest.mark.parametrize("doc", params(FAST_MODES))
def test_documented_command_runs(doc, project):
    if NEEDS_DATA in doc.command and not (project / "data/gsm8k/train.jsonl").exists():
        pytest.skip("the GSM8K example's data (data/gsm8k, linked to ../shared/datasets/gsm8k) is not there")
    script = doc.script()
    *exports, command = script.split("\n")
    prefix = "\n".join(exports + [""])
    mode = doc.mode

    if mode == "make-n":
        out = check(bash(project, prefix + "make -n" + command[len("make") :]), script)
        assert out.strip(), "make -n printed nothing"
    elif mode in ("as-is", "dry-run"):
        run = command + (" -n" if mode == "dry-run" else "")
        out = check(bash(project, prefix + run), prefix + run)
        if re.search(r"(^| )-n( |$)", run):
            assert "This was a dry-run" in out or "Nothing to be done" in out, out[-3000:]
        if "--profile slurm" in run:
            assert re.search(r"Using profiles? slurm( |$)", out, re.M), out[:2000]
    elif mode == "pipe":
        if shutil.which("dot", path=user_env()["PATH"]) is None:
            if IN_CI:
                pytest.fail("graphviz `dot` is not installed (.ci/run installs it)")
            out = check(bash(project, command.split("|")[0]), command)
            assert out.lstrip().startswith("digraph"), out[:500]
            pytest.skip("graphviz `dot` not installed: checked the snakemake part only")
        check(bash(project, prefix + command), script)
        svg = (project / "dag.svg").read_text()
        assert "<svg" in svg and "report" in svg, svg[:500]  # the DAG's last rule is drawn
    elif mode == "conda":
        if shutil.which("conda", path=user_env()["PATH"]) is not None:
            check(bash(project, prefix + command + " -n"), script)
        else:
            bare = re.sub(r" --sdm conda| --conda-create-envs-only", "", command) + " -n"
            check(bash(project, prefix + bare), bare)
            pytest.skip(f"conda not installed: ran `{bare}` (the command without --sdm conda)")
    elif mode == "collect":
        out = check(bash(project, prefix + command + " --collect-only -q"), script)
        m = re.search(r"^(\d+)(?:/\d+)? tests? collected", out, re.M)
        assert m and int(m.group(1)) > 0, out[-2000:]
    elif mode == "pip-dry":
        report = project.parent / "pip-report.json"
        run = command.replace(
            "pip install ", f"pip install --dry-run --no-deps --no-build-isolation --quiet --report {report} ", 1
        )
        check(bash(project, prefix + run), run)
        for item in json.loads(report.read_text())["install"]:
            requested = set(item.get("requested_extras") or ())
            assert requested <= set(item["metadata"].get("provides_extra") or ()), item["metadata"]["name"]
    elif mode == "help":
        script_path = shlex.split(command)[1]
        out = check(bash(project, f"{prefix}.venv/bin/python {script_path} --help"), command)
        for option in re.findall(r"(--[\w-]+)", command):
            assert option in out, f"{command}: {option} is not an option of {script_path}:\n{out}"
    elif mode == "serve-help":
        tool = command.split()[0]
        if shutil.which(tool, path=user_env()["PATH"]) is None:
            pytest.skip(f"{tool} is not installed here (vllm: pip install .[gpu] on a GPU machine)")
        out = check(bash(project, f"{prefix}{tool} serve --help"), command)
        for option in re.findall(r"(--[\w-]+)", command):
            assert option in out, f"{command}: {option} is not an option of `{tool} serve`:\n{out[-3000:]}"
    elif mode == "accelerate":
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser

        argv = shlex.split(command)[2:]
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
        for option in ("config_file", "deepspeed_config_file"):
            path = getattr(args, option, None)
            assert path is None or (project / path).is_file(), f"--{option} {path}: no such file"
        assert args.module and args.training_script == "sftdpo.launch"
    else:
        raise AssertionError(f"no runner for mode {mode}")


# ---------------------------------------------------------------- after a finished run
@pytest.fixture(scope="session")
def finished_project(tiny_run, tmp_path_factory):
    """A fresh copy of the project holding the finished tiny run (results, logs, metadata)."""
    from doc_commands import copy_project

    workdir, _ = tiny_run
    project = copy_project(tmp_path_factory.mktemp("finished") / "sftdpo")
    for name in ("results", "logs", ".snakemake"):
        shutil.copytree(
            workdir / name, project / name, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns("locks")
        )
    return project


def ids_of_this_run(project: Path, command: str) -> dict[str, str]:
    """A documented `<table> --id <row>` names a row of the run it was printed from. The tiny run here trains and
    samples with this CPU's float kernels (another CPU model can sample other rollouts, so other pairs): a row id
    missing from this run's table is replaced by the table's first one."""
    match = re.search(r"(\S+\.parquet) --id (\S+)", command)
    if not match:
        return {}
    ids = pq.read_table(project / match[1], columns=["id"]).column("id").to_pylist()
    return {} if match[2] in ids else {match[2]: ids[0]}


@pytest.mark.parametrize("doc", params({"after-run"}, marks=[pytest.mark.e2e]))
def test_documented_command_runs_after_a_run(doc, finished_project):
    """Commands that read a finished run's results, run as written on the tiny run (snakemake
    ones with its config, so the DAG is the one that ran)."""
    command = doc.script(ids_of_this_run(finished_project, doc.command))
    if command.startswith((".venv/bin/snakemake", "snakemake")):
        command += f" --configfile {TINY.relative_to(ROOT)}"
    out = check(bash(finished_project, command), command)
    if "--report" in command:
        target = (command.split("--report", 1)[1].split() or ["report.html"])[0]
        target = target if target.endswith((".html", ".zip")) else "report.html"
        html = (finished_project / target).read_text()
        assert len(html) > 10_000 and "comparison.png" in html, f"{target}: {len(html)} characters"
    if "rule_times.py" in command:
        assert out.startswith("| job | wall s | max RSS MB |") and "| sft |" in out, out
