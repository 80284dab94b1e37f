"""Rule plan: estimates per GPU rule before submit (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.plan import make_plan, write_plan

sm = snakemake  # noqa: F821
console = run(
    sm, lambda: write_plan(make_plan(sm.params.config, device=sm.params.device), sm.output.json, sm.output.table)
)
print(console)
