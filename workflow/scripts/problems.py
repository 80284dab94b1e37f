"""Rule problems: the task's problems for every collect shard (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.collect import write_problems

sm = snakemake  # noqa: F821
p = sm.params

run(
    sm,
    lambda: write_problems(
        task=p.task,
        task_options=p.task_options[p.task],
        n_problems=p.n_problems,
        seed=p.seed,
        n_shards=p.n_shards,
        out_path=str(sm.output),
    ),
)
