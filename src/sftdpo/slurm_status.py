"""Job states of snakemake-executor-plugin-slurm as sacct writes them: a cancelled job is "CANCELLED by <uid>".

The plugin (2.8.0) polls `sacct -X --parsable2 --format=JobIdRaw,State` and compares each state with its list of
failed states ("CANCELLED", "FAILED", ...) by equality. sacct reports a job cancelled with `scancel` (by its user,
an admin or a script that preempts) as "CANCELLED by 0", which matches nothing and falls to the plugin's "still
running?" branch: Snakemake then waits for that job forever, no retry, no error (benchmarks/chaos_slurm.py found
it). `accept_cancelled_by()`, called by the Snakefile, makes the plugin read the state without its " by <uid>"
suffix, so the job counts as failed and is retried like any other (`retries` in the profile).
"""

from __future__ import annotations

import importlib

PLUGIN = "snakemake_executor_plugin_slurm"


def job_state(state: str) -> str:
    """sacct's state without the " by <uid>" that it appends to CANCELLED."""
    return state.split(" by ", 1)[0]


def accept_cancelled_by() -> bool:
    """Wrap the plugin's status query so it returns job_state() of every job; False when the plugin is absent."""
    try:
        plugin = importlib.import_module(PLUGIN)
    except ImportError:
        return False
    query = plugin.query_job_status
    if getattr(query, "reads_cancelled_by", False):
        return True

    async def query_job_status(command, logger):
        states, duration = await query(command, logger)
        return (None if states is None else {job: job_state(s) for job, s in states.items()}), duration

    query_job_status.reads_cancelled_by = True
    plugin.query_job_status = query_job_status
    return True
