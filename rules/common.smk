# Config access and input functions shared by the rule files (no rules here).
# Defaults live in config/schema.yaml only (Snakemake's `validate` fills them in), so rules index
# config directly; cross-field rules are checked once, here, before any job runs.
import sys

sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from sftdpo.config_checks import check_config, dpo_settings
from sftdpo.experts import EXPERT_MODULES
from sftdpo.fingerprint import code_fingerprint
from sftdpo.tasks import size_problems

check_config(config, size_problems(config))


wildcard_constraints:
    shard=r"\d+",
    # round<N> names a DPO round (results/dpo/round<N>/), never a variant
    variant=r"(?!round\d+\b)[A-Za-z0-9_]+",
    round=r"[2-9]|[1-9]\d+",
    stage=r"base|sft|dpo|dpo-[A-Za-z0-9_]+",


STAGE_MODEL = {
    "base": "results/base/model",
    "sft": "results/sft/model",
    "dpo": "results/dpo/adapter",
}


# Local files of the experiment trackers (`<stage>.train.report_to`), one directory a run.
TRACKING_DIR = "logs/tracking"


def curriculum_evaluation():
    """How the curriculum's checks decode and verify (as evaluate does); None without a curriculum, so these
    keys rerun SFT only when it has one."""
    if not config["sft"]["curriculum"]:
        return None
    return {
        "task_options": task_options(),
        "max_new_tokens": config["evaluate"]["max_new_tokens"],
        "batch_size": config["evaluate"]["batch_size"],
        "kv_cache_mb": config["evaluate"]["kv_cache_mb"],
    }


def task_options():
    """Per-task options, keyed by task name (validation and evaluation may meet several tasks)."""
    name = config["task"]["name"]
    return {name: config["task"][name]}


def shards(stage):
    return [str(i) for i in range(config[stage]["shards"])]


def resources(stage):
    """Generic resources of a GPU rule (`<stage>.resources`); placement comes from the profile."""
    return config[stage]["resources"]


def model_of(stage):
    """The model evaluated as one stage: base, sft, dpo (the main DPO run) or dpo-<variant>."""
    if stage.startswith("dpo-"):
        return f"results/dpo/{stage[len('dpo-'):]}/adapter"
    return STAGE_MODEL[stage]


def stage_model(wildcards):
    return model_of(wildcards.stage)


def dpo_stages():
    """Every DPO run, as evaluated: dpo (the main run, round 1), dpo-<variant> for each of dpo.variants,
    and dpo-round<r> for each later round (dpo.rounds)."""
    variants = [f"dpo-{name}" for name in config["dpo"]["variants"]]
    rounds = [f"dpo-round{r}" for r in range(2, config["dpo"]["rounds"] + 1)]
    return ["dpo", *variants, *rounds]


def previous_round_model(wildcards):
    """The model round r starts from, samples from and uses as reference: round r-1's DPO model."""
    previous = int(wildcards.round) - 1
    return model_of("dpo" if previous == 1 else f"dpo-round{previous}")


def dpo_metrics_files():
    """metrics.json of every DPO run, in the order of dpo_stages()."""
    return [
        os.path.join(os.path.dirname(model_of(stage)), "metrics.json")
        for stage in dpo_stages()
    ]


def dpo_run(wildcards):
    """Settings of one DPO run (the main run, a variant or a later round), with its own resume directory."""
    variant = getattr(wildcards, "variant", None)
    round_ = getattr(wildcards, "round", None)
    work_dir = (
        f"work/dpo/variants/{variant}"
        if variant
        else f"work/dpo/round{round_}" if round_ else "work/dpo"
    )
    return {
        **dpo_settings(config, variant),
        "work_dir": work_dir,
        "tracking_dir": TRACKING_DIR,
    }


def task_data_files():
    """Files the configured task reads its problems from (e.g. task.gsm8k.path)."""
    path = task_options()[config["task"]["name"]].get("path")
    return [path] if path else []


def expert_options():
    """The configured expert's options (`collect.<expert>`; check_config made sure they are set)."""
    return config["collect"][config["collect"]["expert"]]


def collect_code():
    """Code fingerprint of collect: sftdpo.collect and the configured expert's modules only."""
    return code_fingerprint(
        "sftdpo.collect", *EXPERT_MODULES[config["collect"]["expert"]]
    )


def collect_inputs(wildcards):
    """Data a collect shard reads: imported files, the task's problem file, a local policy model."""
    expert = config["collect"]["expert"]
    if expert == "files":
        return list(expert_options()["paths"])
    files = task_data_files()
    model = expert_options()["model"] if expert == "policy" else None
    # A local directory is an input (a new model reruns collect); otherwise it is a Hugging Face id.
    if model and os.path.exists(model):
        files.append(model)
    return files


def collect_problems(wildcards):
    """The task's problems, made once for all shards (`rule problems`); none for an expert that brings its own."""
    return (
        []
        if config["collect"]["expert"] == "files"
        else ["results/demos/problems.parquet"]
    )


def tokenizer_files():
    """The import the scratch tokenizer learns from (collect.expert: files), else None (task text)."""
    if config["model"]["name_or_path"] != "scratch":
        return None
    if config["collect"]["expert"] != "files":
        return None
    keys = (
        "paths",
        "format",
        "columns",
        "strip_annotations",
        "answer_pattern",
        "encoding_errors",
    )
    return {k: v for k, v in expert_options().items() if k in keys}


def base_model_inputs(wildcards):
    """Data the scratch tokenizer is trained on (none for a Hugging Face model), and a chat template file."""
    template = config["model"]["chat_template"]
    templates = [template] if template and os.path.isfile(template) else []
    if config["model"]["name_or_path"] != "scratch":
        return templates
    files = tokenizer_files()
    return (list(files["paths"]) if files else task_data_files()) + templates


def base_model_code():
    """Code fingerprint of base_model; the importer counts only when the tokenizer learns from an import."""
    return code_fingerprint(
        "sftdpo.base_model", *(["sftdpo.importers"] if tokenizer_files() else [])
    )
