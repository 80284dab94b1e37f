# sftdpo: expert demonstrations -> validation -> conversion -> split -> SFT -> rollouts ->
# preferences -> DPO -> evaluation (Base vs SFT vs DPO). See README.md.
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


# Found beside this file, so `--directory elsewhere` and `-s path/Snakefile` work too.
configfile: os.path.join(workflow.basedir, "config/config.yaml")


sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from sftdpo.config_checks import coerce_by_schema, schema_error_message
from sftdpo.slurm_status import accept_cancelled_by

# On Slurm, a job cancelled with scancel (sacct: "CANCELLED by <uid>") fails and is retried instead of
# being waited for forever (src/sftdpo/slurm_status.py).
accept_cancelled_by()

# `--config dpo='{beta: 0.2}'` gives the string "0.2": read it as the number the schema wants.
config.update(
    coerce_by_schema(config, os.path.join(workflow.basedir, "config/schema.yaml"))
)
# Snakemake's own message prints the whole sub-schema; ours names the key, the value and the rule.
try:
    validate(config, "config/schema.yaml")
except WorkflowError as err:
    raise WorkflowError(schema_error_message(err)) from None


# The front page of `snakemake --report report.html`.
report: "workflow/report/workflow.rst"


# Concatenating shards (and the plan) takes a second: on a cluster, run it on the submitting node, not as a Slurm job.
localrules:
    plan,
    merge_demos,
    merge_rollouts,
    merge_rollouts_round,


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/rollouts.smk"
include: "rules/evaluate.smk"
include: "rules/export.smk"
include: "rules/plan.smk"


rule all:
    """The whole DAG: the report comparing Base, SFT and DPO, and every shard."""
    default_target: True
    input:
        "results/report/summary.json",
        "results/report/comparison.png",
        "results/report/report.md",
        # The shards too: a deleted shard is rebuilt, and being newer it reruns what depends on it.
        expand("results/demos/shards/{shard}.parquet", shard=shards("collect")),
        expand("results/rollouts/shards/{shard}.parquet", shard=shards("rollouts")),


# After a successful run: accuracy per stage with CIs, and where the report is (nothing if there is no summary yet).
onsuccess:
    from sftdpo.report import run_summary

    summary = run_summary("results/report/summary.json", "results/report/report.md")
    if summary:
        print(summary)
