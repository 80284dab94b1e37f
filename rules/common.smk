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


def task_data_files():
    """Files the configured task reads its problems from (e.g. task.gsm8k.path)."""
    path = config["task"].get(config["task"]["name"], {}).get("path")
    return [path] if path else []


def expert_options():
    return config["collect"].get(config["collect"]["expert"], {})


def collect_code():
    """Code fingerprint of collect: sftdpo.collect and the configured expert's modules only."""
    from sftdpo.experts import EXPERT_MODULES

    return code_fingerprint(
        "sftdpo.collect", *EXPERT_MODULES.get(config["collect"]["expert"], ())
    )


def collect_inputs(wildcards):
    """Data a collect shard reads: imported files, the task's problem file, a local policy model."""
    expert = config["collect"]["expert"]
    if expert == "files":
        return list(expert_options().get("paths", []))
    files = task_data_files()
    model = expert_options().get("model") if expert == "policy" else None
    # A local directory is an input (a new model reruns collect); otherwise it is a Hugging Face id.
    if model and os.path.exists(model):
        files.append(model)
    return files


def tokenizer_files():
    """The import the scratch tokenizer learns from (collect.expert: files), else None (task text)."""
    if config["model"]["name_or_path"] != "scratch":
        return None
    if config["collect"]["expert"] != "files":
        return None
    keys = ("paths", "format", "columns", "strip_annotations")
    return {k: v for k, v in expert_options().items() if k in keys}


def base_model_inputs(wildcards):
    """Data the scratch tokenizer is trained on (none for a Hugging Face model)."""
    if config["model"]["name_or_path"] != "scratch":
        return []
    files = tokenizer_files()
    return list(files.get("paths", [])) if files else task_data_files()


def base_model_code():
    modules = ["sftdpo.modeling", "sftdpo.tasks"]
    if tokenizer_files():
        modules.append("sftdpo.importers")
    return code_fingerprint(*modules)
