# sftdpo: expert demonstrations -> validation -> conversion -> split -> SFT -> rollouts ->
# preferences -> DPO -> evaluation (Base vs SFT vs DPO). See README.md.
import os

from snakemake.utils import min_version, validate

min_version("9.0")


# Found beside this file, so `--directory elsewhere` and `-s path/Snakefile` work too.
configfile: os.path.join(workflow.basedir, "config/config.yaml")


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/rollouts.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        "results/report/summary.json",
        "results/report/comparison.png",
        "results/report/report.md",
        # The shards too: a deleted shard is rebuilt, and being newer it reruns what depends on it.
        expand("results/demos/shards/{shard}.parquet", shard=shards("collect")),
        expand("results/rollouts/shards/{shard}.parquet", shard=shards("rollouts")),
