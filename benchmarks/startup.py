"""Per-job start-up: what every Snakemake job pays before its library function runs.

For each rule script in workflow/scripts/ of a checkout, a fresh interpreter runs the script's own
imports (the `from sftdpo... import` lines) and the checkout's `sftdpo.runner.run` with a stand-in
stage (`lambda: None`) and the rule's params (`threads` for the rules that compute with torch), i.e.
everything a job does before its real work. Median of `--repeats` runs per rule, in seconds.

    .venv/bin/python benchmarks/startup.py                 # this checkout
    .venv/bin/python benchmarks/startup.py --repo /tmp/old # another checkout (e.g. before a change)

Prints a markdown table (rule, median s, whether torch got imported) and the total over the default
DAG's 18 jobs (collect and rollouts have 2 shards, evaluate 3 stages).

    .venv/bin/python benchmarks/startup.py --first-forward --save [--tiny benchmarks/peers/tiny]

times each model rule's real job (sft, rollouts, dpo, evaluate), run by `snakemake --forcerun <rule>` in a copy of
a finished tiny run (tests/config/tiny.yaml: the default's model, built by benchmarks/peers.py; built here when
absent), from the job's process start to its model's first forward pass: a `sitecustomize` on PYTHONPATH hooks
torch's module calls in the job's interpreter, writes the seconds since the process started (/proc) and ends the
job. That is imports, config and input checks, reading the data, loading the model (and TRL's trainer set-up).
The peer row: a bare script that imports torch and transformers, loads the same model with
`AutoModelForCausalLM.from_pretrained` and runs one forward pass, timed by the same hook.
`--save` keeps the runs in benchmarks/results/first_forward.json and rewrites the README's `first-forward-table`.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from readme_table import replace_table  # noqa: E402

TINY = ROOT / "tests/config/tiny.yaml"
SAVED = ROOT / "benchmarks/results/first_forward.json"
TABLE = ("first-forward-table", "benchmarks/startup.py --first-forward --save")  # README marker name, command
# Each model rule's job in the tiny run: the target its --forcerun rebuilds.
MODEL_JOBS = {
    "sft": "results/sft/model",
    "rollouts": "results/rollouts/shards/0.parquet",
    "dpo": "results/dpo/adapter",
    "evaluate": "results/eval/sft.parquet",
}
# Loaded by the job's interpreter (PYTHONPATH): when torch is imported, a hook on every module call records the
# seconds since the process started (its start time in clock ticks since boot, /proc) at the first forward pass.
FIRST_FORWARD_HOOK = """
import importlib.abc, importlib.util, os, sys

OUT = os.environ.get("SFTDPO_FIRST_FORWARD_OUT")


def _since_start():
    ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
    return float(open("/proc/uptime").read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")


def _first_forward(module, args):
    with open(OUT, "w") as fh:
        fh.write(str(_since_start()))
    os._exit(0)  # the measurement is taken: the job's work is not


class _Torch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            module.nn.modules.module.register_module_forward_pre_hook(_first_forward)

        spec.loader.exec_module = exec_module
        return spec


if OUT:
    sys.meta_path.insert(0, _Torch())
"""
# Rules whose torch numerics are pinned by the config's `<stage>.resources.threads` (their `threads` param).
TORCH_RULES = {"sft", "rollouts", "dpo", "evaluate"}
JOBS = {"collect": 2, "rollouts": 2, "evaluate": 3}

PROBE = """
import sys, time, json
sys.path.insert(0, {src!r})
{imports}
from sftdpo.runner import run

class Params(dict):
    __getattr__ = dict.get

class Job:
    rule = {rule!r}
    wildcards = {{}}
    threads = 1
    log = [{log!r}]
    params = Params({params})
    resources = {{}}
    input = {{}}
    output = []

run(Job, lambda: None)
print(json.dumps({{"torch": "torch" in sys.modules}}))
"""


def script_imports(script: Path) -> str:
    """The script's `from sftdpo... import ...` statements and its `start_job()` call, in order, as source."""
    tree = ast.parse(script.read_text())
    lines = [
        ast.unparse(node)
        for node in tree.body
        if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sftdpo"))
        or (isinstance(node, ast.Expr) and ast.unparse(node) == "start_job()")
    ]
    return "\n".join(lines)


def measure(repo: Path, script: Path, repeats: int) -> tuple[float, bool]:
    rule = script.stem
    params = {"threads": 1} if rule in TORCH_RULES else {}
    times, torch = [], False
    with tempfile.TemporaryDirectory() as tmp:
        code = PROBE.format(
            src=str(repo / "src"),
            imports=script_imports(script),
            rule=rule,
            log=str(Path(tmp) / "job.log"),
            params=params,
        )
        for _ in range(repeats):
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - started)
            torch = json.loads(out.stdout.strip().splitlines()[-1])["torch"]
    return statistics.median(times), torch


def first_forward(tiny: Path, rule: str, repeats: int) -> list[float]:
    """Seconds from the process start of `rule`'s job to its first forward pass, `repeats` runs."""
    snakemake = [str(ROOT / ".venv/bin/snakemake"), "-s", str(ROOT / "Snakefile"), "-c2"]
    config = ["--configfile", str(TINY)]  # last: it takes every argument after it
    tiny.mkdir(parents=True, exist_ok=True)
    # Up to date with this checkout first (a library edit reruns its rules), so only the measured job runs.
    subprocess.run([*snakemake, *config], cwd=tiny, check=True, capture_output=True)
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        hook_dir, run_dir = Path(tmp) / "hook", Path(tmp) / "run"
        hook_dir.mkdir()
        (hook_dir / "sitecustomize.py").write_text(FIRST_FORWARD_HOOK)
        for name in ("results", ".snakemake"):  # not work/: rollouts would resume its samples from there
            if (tiny / name).exists():
                shutil.copytree(tiny / name, run_dir / name, symlinks=True)
        for _ in range(repeats):
            cmd = [*snakemake, MODEL_JOBS[rule], "--forcerun", rule, "--latency-wait", "0", *config]
            dry_run = [*cmd[:-2], "-n", *config]
            planned = subprocess.run(dry_run, cwd=run_dir, capture_output=True, text=True, check=True).stdout
            if not re.search(rf"^{rule}\s+1$", planned, re.M) or not re.search(r"^total\s+1$", planned, re.M):
                raise SystemExit(f"{rule}: the run would not be this one job alone:\n{planned[-2000:]}")
            # The job ends at its first forward pass, without its outputs: Snakemake reports it failed.
            seconds.append(seconds_to_first_forward(cmd, run_dir, hook_dir, rule))
            subprocess.run([*snakemake, "--unlock", *config], cwd=run_dir, capture_output=True)
    return seconds


def seconds_to_first_forward(cmd: list[str], cwd: Path, hook_dir: Path, what: str) -> float:
    """Run `cmd` with the hook (`hook_dir`'s sitecustomize) on PYTHONPATH; the seconds it recorded."""
    out = hook_dir / "seconds"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(hook_dir), "SFTDPO_FIRST_FORWARD_OUT": str(out)}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if not out.exists():
        raise SystemExit(f"{what}: no forward pass recorded\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return float(out.read_text())


# The peer: a bare script that loads the same model with transformers and runs one forward pass (the same hook).
BARE_SCRIPT = """
import sys
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
model(torch.tensor([[1, 2, 3]]))
"""


def bare_first_forward(tiny: Path, repeats: int) -> list[float]:
    """Seconds from the process start of `BARE_SCRIPT` (the tiny run's SFT model) to its first forward pass."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(FIRST_FORWARD_HOOK)
        cmd = [sys.executable, "-c", BARE_SCRIPT, str(tiny / MODEL_JOBS["sft"])]
        return [seconds_to_first_forward(cmd, tiny, Path(tmp), "the bare script") for _ in range(repeats)]


def render(record: dict) -> str:
    """The README table of a saved first-forward record."""
    lines = ["| model job | first forward pass s (median) | runs |", "|---|---|---|"]
    rows = {**record["rules"], **({"bare script (peer)": record["bare"]} if "bare" in record else {})}
    for rule, runs in rows.items():
        lines.append(f"| {rule} | {statistics.median(runs):.2f} | {', '.join(f'{s:.2f}' for s in runs)} |")
    lines += ["", f"Seconds from the job's process start; measured on {record['machine']}, commit {record['commit']}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-forward", action="store_true", help="model jobs: seconds to the first forward")
    parser.add_argument("--tiny", type=Path, default=ROOT / "benchmarks/peers/tiny", help="a finished tiny run")
    parser.add_argument("--save", action="store_true", help="--first-forward: keep the record, rewrite the README")
    args = parser.parse_args()
    if args.first_forward:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        record = {
            "machine": f"{os.uname().machine}, {os.cpu_count()} cores, Python {sys.version.split()[0]}",
            "commit": commit.stdout.strip(),
            "rules": {rule: first_forward(args.tiny, rule, args.repeats) for rule in MODEL_JOBS},
            "bare": bare_first_forward(args.tiny, args.repeats),
        }
        print(render(record))
        if args.save:
            SAVED.write_text(json.dumps(record, indent=1) + "\n")
            replace_table(TABLE[0], render(record), TABLE[1])
        return
    rows, total = [], 0.0
    for script in sorted((args.repo / "workflow" / "scripts").glob("*.py")):
        seconds, torch = measure(args.repo, script, args.repeats)
        rows.append((script.stem, seconds, torch))
        total += seconds * JOBS.get(script.stem, 1)
    print(f"per-job start-up, {args.repo} (median of {args.repeats})\n")
    print("| rule | start-up s | torch imported |\n|---|---|---|")
    for rule, seconds, torch in rows:
        print(f"| {rule} | {seconds:.2f} | {'yes' if torch else 'no'} |")
    print(f"\ntotal over the default DAG's {sum(JOBS.get(r, 1) for r, _, _ in rows)} jobs: {total:.1f} s")


if __name__ == "__main__":
    main()
