# Config access and input functions shared by the rule files (no rules here).
import sys

sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from sftdpo.fingerprint import code_fingerprint


wildcard_constraints:
    shard=r"\d+",
    stage="base|sft|dpo",


STAGE_MODEL = {
    "base": "results/base/model",
    "sft": "results/sft/adapter",
    "dpo": "results/dpo/adapter",
}


def task_options():
    """Per-task options, keyed by task name (validation and evaluation may meet several tasks)."""
    name = config["task"]["name"]
    return {name: config["task"].get(name, {})}


def shards(stage):
    return [str(i) for i in range(config[stage]["shards"])]


def gpu_resources(stage):
    """Generic resources of a GPU rule from config; placement comes from the profile."""
    return config[stage].get("resources", {})


def stage_model(wildcards):
    return STAGE_MODEL[wildcards.stage]
