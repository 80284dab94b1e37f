"""Checks across config fields, run once when the workflow loads (after the schema filled the defaults).

The schema checks each field on its own; these are the rules that tie fields together, so a config
that cannot work stops before any job runs, with the keys to change.
"""

from __future__ import annotations

import os
import re
from typing import Any

NEEDS_OPTIONS = ("teacher", "policy", "files")
SPLITS = ("train", "val", "test")
# Named chat templates of model.chat_template (sftdpo.modeling.CHAT_TEMPLATES holds their text).
CHAT_TEMPLATE_PRESETS = ("sftdpo",)
# Columns of chat.parquet a split can be stratified by.
STRATA_COLUMNS = ("difficulty", "task", "expert", "answer")


def looks_local(name: str) -> bool:
    """Whether a model name is meant as a local directory rather than a Hugging Face id ("org/name")."""
    if name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or name in (".", ".."):
        return True
    parts = [p for p in name.split("/")]
    # Hub ids have one slash at most; "models/qwen" counts as local when "models" is a local directory.
    return len(parts) > 2 or (len(parts) == 2 and os.path.isdir(parts[0]))


def model_problems(key: str, name: str | None) -> list[str]:
    if not name or name == "scratch" or not looks_local(name):
        return []
    path = os.path.expanduser(name)
    if not os.path.isdir(path):
        what = "is a file, not a directory" if os.path.exists(path) else "does not exist"
        return [
            f"{key}: local model directory {name} {what} (working directory {os.getcwd()}); give a directory "
            "with config.json and the tokenizer, or a Hugging Face id such as Qwen/Qwen2.5-0.5B-Instruct"
        ]
    return []


# DPO loss terms sftdpo computes itself (sftdpo.dpo.preference_loss); the first two are not in TRL.
DPO_NOT_IN_TRL = ("dpop", "cdpo")
DPO_OWN_LOSSES = ("sigmoid", "sft", *DPO_NOT_IN_TRL)


def loss_problems(loss_type: list[str], loss_weights: list[float] | None) -> list[str]:
    """What is wrong with a `dpo.loss_type` / `dpo.loss_weights` combination."""
    problems = []
    if loss_weights is not None and len(loss_weights) != len(loss_type):
        problems.append(f"dpo.loss_weights has {len(loss_weights)} weights for {len(loss_type)} loss types {loss_type}")
    others = sorted(set(loss_type) - set(DPO_OWN_LOSSES))
    if any(t in DPO_NOT_IN_TRL for t in loss_type) and others:
        problems.append(f"dpo.loss_type {loss_type}: {list(DPO_NOT_IN_TRL)} combine only with "
                        f"{list(DPO_OWN_LOSSES)}, not with {others}")  # fmt: skip
    return problems


# The keys of `dpo` one training run reads; a variant overlays some of them (dpo_settings).
DPO_RUN_KEYS = ("beta", "loss_type", "loss_weights", "label_smoothing", "dpop_lambda", "lora", "train")


def dpo_settings(config: dict[str, Any], variant: str | None = None) -> dict[str, Any]:
    """The settings of one DPO run: `dpo` (variant None, the main run in results/dpo/) or `dpo` overlaid
    with `dpo.variants.<variant>` (results/dpo/<variant>/), `train` key by key; plus the seed it uses."""
    settings = {key: config["dpo"][key] for key in DPO_RUN_KEYS}
    settings["seed"] = config["seed"]
    if variant is None:
        return settings
    variants = config["dpo"]["variants"]
    if variant not in variants:
        raise ValueError(f"dpo.variants has no variant {variant!r} (variants: {sorted(variants) or 'none'})")
    overlay = variants[variant] or {}
    for key, value in overlay.items():
        settings[key] = {**settings["train"], **value} if key == "train" else value
    return settings


def config_problems(config: dict[str, Any]) -> list[str]:
    """Every cross-field problem of a (schema-validated) config, as a sentence naming the keys."""
    problems = []
    expert = config["collect"]["expert"]
    if expert in NEEDS_OPTIONS and not config["collect"].get(expert):
        problems.append(
            f"collect.expert is {expert!r} but collect.{expert} is not set "
            "(see config/schema.yaml and docs/real-data.md)"
        )
    task = config["task"]["name"]
    if task == "gsm8k" and expert != "files" and not config["task"]["gsm8k"]["path"]:
        problems.append(
            "task.name is 'gsm8k' but task.gsm8k.path is not set: point it to a GSM8K JSONL file "
            "(or import demonstrations with collect.expert: files)"
        )
    rows, trained = config["convert"]["max_length"], config["sft"]["train"]["max_length"]
    problems += model_problems("model.name_or_path", config["model"]["name_or_path"])
    if config["model"]["name_or_path"] == "scratch":
        positions = config["model"]["scratch"]["max_positions"]
        for key, length in (("convert.max_length", rows), ("sft.train.max_length", trained)):
            if length > positions:
                problems.append(
                    f"{key} ({length}) > model.scratch.max_positions ({positions}): the scratch model cannot "
                    f"read rows that long; raise model.scratch.max_positions or lower {key}"
                )
    template = config["model"]["chat_template"]
    if template and template not in CHAT_TEMPLATE_PRESETS and not os.path.isfile(template):
        problems.append(
            f"model.chat_template: {template} is neither a preset ({', '.join(CHAT_TEMPLATE_PRESETS)}) nor a file "
            f"(working directory {os.getcwd()}); give a Jinja file, a preset, or null for the tokenizer's own"
        )
    arithmetic = config["task"].get("arithmetic") or {}
    if task == "arithmetic" and arithmetic.get("min_ops", 1) > arithmetic.get("max_ops", 3):
        problems.append(
            f"task.arithmetic.min_ops ({arithmetic['min_ops']}) > task.arithmetic.max_ops ({arithmetic['max_ops']})"
        )
    path = config["task"]["gsm8k"]["path"]
    if task == "gsm8k" and expert != "files" and path and os.path.isfile(path):
        with open(path, "rb") as fh:
            available = sum(1 for line in fh if line.strip())
        if config["task"]["n_problems"] > available:
            problems.append(
                f"task.n_problems ({config['task']['n_problems']}) > the {available} rows of task.gsm8k.path "
                f"({path}); lower task.n_problems"
            )
    unknown = sorted(set(config["split"]["strata"]) - set(STRATA_COLUMNS))
    if unknown:
        problems.append(f"split.strata: {unknown} are not columns of the data; use some of {list(STRATA_COLUMNS)}")
    if expert == "policy" and config["collect"].get("policy"):
        problems += model_problems("collect.policy.model", config["collect"]["policy"].get("model"))
    fractions = config["split"]["fractions"]
    total = sum(fractions[s] for s in SPLITS)
    if abs(total - 1.0) > 1e-6:
        problems.append(
            f"split.fractions sum to {total:g}, not 1 ({', '.join(f'{s}: {fractions[s]:g}' for s in SPLITS)}); "
            "make train + val + test = 1"
        )
    if fractions["test"] <= 0:
        problems.append("split.fractions.test is 0: evaluate and report need test rows; give it a share")
    if fractions["val"] <= 0 and config["sft"]["eval_rows"] > 0:
        problems.append(
            f"split.fractions.val is 0 but sft.eval_rows is {config['sft']['eval_rows']}: the eval loss needs "
            "validation rows; give val a share or set sft.eval_rows: 0"
        )
    if fractions["val"] <= 0 and config["sft"].get("curriculum"):
        problems.append(
            "split.fractions.val is 0 but sft.curriculum is set: its checks measure accuracy on val items; "
            "give val a share or set sft.curriculum: null"
        )
    if expert != "files":
        n, shards = config["task"]["n_problems"], config["collect"]["shards"]
        if n < shards:
            problems.append(
                f"task.n_problems ({n}) < collect.shards ({shards}): {shards - n} shards would be empty; "
                "lower collect.shards or raise task.n_problems"
            )
        for name in SPLITS:
            expected = n * fractions[name]
            if 0 < fractions[name] and expected < 1:
                problems.append(
                    f"split.fractions.{name} ({fractions[name]:g}) of task.n_problems ({n}) is {expected:.2g} rows: "
                    f"the {name} split would be empty; raise task.n_problems"
                )
    if config["rollouts"]["n_prompts"] < config["rollouts"]["shards"]:
        problems.append(
            f"rollouts.n_prompts ({config['rollouts']['n_prompts']}) < rollouts.shards "
            f"({config['rollouts']['shards']}): some rollout shards would be empty; lower rollouts.shards"
        )
    if trained < rows:
        # SFT trains on tokens.h5, whose rows are up to convert.max_length tokens long.
        problems.append(
            f"sft.train.max_length ({trained}) < convert.max_length ({rows}): rows of tokens.h5 up "
            f"to {rows} tokens would be cut during training; raise sft.train.max_length or lower "
            "convert.max_length"
        )
    problems += checkpoint_problems("sft.train", config["sft"]["train"])
    for variant in [None, *config["dpo"]["variants"]]:
        settings = dpo_settings(config, variant)
        found = loss_problems(settings["loss_type"], settings["loss_weights"])
        found += checkpoint_problems("dpo.train", settings["train"])
        problems += [f"dpo.variants.{variant} (overlaid on dpo): {p}" if variant else p for p in found]
    return problems


def checkpoint_problems(key: str, train: dict[str, Any]) -> list[str]:
    """A checkpoint between two logging steps would resume with the loss sum since the last log lost: the
    Trainer logs its first loss after a resume averaged over fewer steps than an uninterrupted run does."""
    save, logging = train["save_steps"], train["logging_steps"]
    if save % logging == 0:
        return []
    return [
        f"{key}.save_steps ({save}) is not a multiple of {key}.logging_steps ({logging}): a run resumed from a "
        f"checkpoint would log a loss averaged over fewer steps than an uninterrupted run; make save_steps a "
        f"multiple of logging_steps (e.g. {-(-save // logging) * logging})"
    ]


def check_config(config: dict[str, Any], more_problems: list[str] = ()) -> None:
    """Stop with every problem at once: the cross-field ones and `more_problems` (from domain code)."""
    problems = config_problems(config) + list(more_problems)
    if problems:
        raise ValueError("config: " + "\n  ".join(["the configuration cannot work:", *problems]))


def schema_error_message(err: BaseException) -> str:
    """One or two lines for a schema error of Snakemake's `validate` (which prints the whole sub-schema):
    the key path, the value, what the schema wants, and the key's description."""
    cause, seen = None, err
    while seen is not None and cause is None:  # Snakemake raises its error while handling jsonschema's
        if hasattr(seen, "absolute_path") and hasattr(seen, "validator"):
            cause = seen
        seen = seen.__cause__ or seen.__context__
    if cause is None:
        return str(err)
    path = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
    value = cause.instance
    shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 80 else type(value).__name__
    rule = cause.validator_value
    if cause.validator in ("properties", "required", "additionalProperties", "oneOf", "anyOf"):
        rule = None  # the message says it; the value would be a whole sub-schema
    line = (
        f"config: {path} = {shown}: {cause.message}"
        if cause.validator != "additionalProperties"
        else (f"config: {path}: {cause.message}")
    )
    if rule is not None and repr(rule) in cause.message:
        pass
    elif rule is not None and not isinstance(rule, (dict, list)):
        line += f" (schema: {cause.validator} {rule!r})"
    elif isinstance(rule, list) and len(repr(rule)) < 100:
        line += f" (schema: {cause.validator} {rule!r})"
    description = (cause.schema or {}).get("description") if isinstance(cause.schema, dict) else None
    if description:
        line += "\n  " + re.sub(r"\s+", " ", description)[:300]
    return line + "\n  (every key: config/schema.yaml)"


# -- values given on the command line ------------------------------------------------------------------------
def coerce_by_schema(config: dict[str, Any], schema_path: str) -> dict[str, Any]:
    """The config with strings read as YAML where the schema wants a number, integer, boolean or null.

    `--config dpo='{beta: 0.2}'` reaches the workflow as {"beta": "0.2"} (Snakemake reads nested values
    with YAML's BaseLoader, where every scalar is a string); this makes it 0.2. A string that does not read
    as the wanted type stays a string, so validation still names it.
    """
    import yaml

    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    return _coerce(config, schema, schema)


def _coerce(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    alternatives = _alternatives(schema, root)
    if isinstance(value, dict):
        objects = [s for s in alternatives if "properties" in s or isinstance(s.get("additionalProperties"), dict)]
        shape = objects[0] if objects else {}
        extra = shape.get("additionalProperties")
        default = extra if isinstance(extra, dict) else {}
        return {k: _coerce(v, shape.get("properties", {}).get(k, default), root) for k, v in value.items()}
    if isinstance(value, list):
        items = next((s["items"] for s in alternatives if isinstance(s.get("items"), dict)), {})
        return [_coerce(v, items, root) for v in value]
    if isinstance(value, str):
        wanted = {t for s in alternatives for t in _types(s)}
        if wanted and "string" not in wanted:
            parsed = _yaml_scalar(value)
            if any(_is_type(parsed, t) for t in wanted):
                return parsed
    return value


def _alternatives(schema: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema and each of its oneOf/anyOf branches, `$ref`s resolved."""
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    branches = schema.get("oneOf", []) + schema.get("anyOf", [])
    return [schema] + [alt for branch in branches for alt in _alternatives(branch, root)]


def _types(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _yaml_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return {"boolean": isinstance(value, bool), "null": value is None}.get(kind, False)
