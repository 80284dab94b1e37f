"""Rule collect: one shard of expert demonstrations, resumable (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.collect import collect_shard

sm = snakemake  # noqa: F821
p = sm.params

run(
    sm,
    lambda: collect_shard(
        task=p.task,
        task_options=p.task_options[p.task],
        n_problems=p.n_problems,
        expert=p.expert,
        expert_options=p.expert_options,
        seed=p.seed,
        shard=int(sm.wildcards.shard),
        n_shards=p.n_shards,
        work_dir=p.work_dir,
        out_path=sm.output.demos,
        summary_path=sm.output.summary,
        flush_every=p.flush_every,
        problems_path=sm.input.problems[0] if sm.input.problems else None,
    ),
)
