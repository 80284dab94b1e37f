"""A job cancelled with scancel counts as failed for the Slurm plugin (src/sftdpo/slurm_status.py).

sacct reports it as "CANCELLED by <uid>"; the plugin compares states with "CANCELLED" by equality and, without the
fix, waited for such a job forever (benchmarks/chaos_slurm.py, preemption). The plugin's own status query runs here
on a command that prints sacct's lines; tests/test_slurm.py scancels a real job on the test cluster.
"""

import asyncio
import logging
import shlex

import snakemake_executor_plugin_slurm as plugin

from sftdpo.slurm_status import accept_cancelled_by, job_state

# What `sacct -X --parsable2 --noheader --format=JobIdRaw,State` printed on the test cluster after `scancel 28`.
SACCT = ["27|COMPLETED", "28|CANCELLED by 0", "29|RUNNING", "30|CANCELLED by 1000"]


def query():
    command = shlex.join(["printf", r"%s\n", *SACCT])
    return asyncio.run(plugin.query_job_status(command, logging.getLogger("test")))


def test_plugin_reads_cancelled_by_as_cancelled(monkeypatch):
    monkeypatch.setattr(plugin, "query_job_status", plugin.query_job_status)  # restored after the test
    before, _ = query()
    assert before["28"] == "CANCELLED by 0"  # what the plugin, unpatched, takes for "still running"
    assert accept_cancelled_by() and accept_cancelled_by()  # twice wraps once
    after, _ = query()
    assert after == {"27": "COMPLETED", "28": "CANCELLED", "29": "RUNNING", "30": "CANCELLED"}


def test_job_state_keeps_other_states():
    assert [job_state(s) for s in ("FAILED", "NODE_FAIL", "CANCELLED", "CANCELLED by 42")] == [
        "FAILED", "NODE_FAIL", "CANCELLED", "CANCELLED"
    ]  # fmt: skip
