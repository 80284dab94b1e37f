"""Per-job start-up: what every Snakemake job pays before its library function runs.

For each rule script in workflow/scripts/ of a checkout, a fresh interpreter runs the script's own
imports (the `from sftdpo... import` lines) and the checkout's `sftdpo.runner.run` with a stand-in
stage (`lambda: None`) and the rule's params (`threads` for the rules that compute with torch), i.e.
everything a job does before its real work. Median of `--repeats` runs per rule, in seconds.

    .venv/bin/python benchmarks/startup.py                 # this checkout
    .venv/bin/python benchmarks/startup.py --repo /tmp/old # another checkout (e.g. before a change)

Prints a markdown table (rule, median s, whether torch got imported) and the total over the default
DAG's 18 jobs (collect and rollouts have 2 shards, evaluate 3 stages).
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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

run(Job, lambda: None)
print(json.dumps({{"torch": "torch" in sys.modules}}))
"""


def script_imports(script: Path) -> str:
    """The script's `from sftdpo... import ...` statements, as source."""
    tree = ast.parse(script.read_text())
    lines = [
        ast.unparse(node)
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sftdpo")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
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
