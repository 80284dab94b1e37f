"""Checks across config fields, run once when the workflow loads (after the schema filled the defaults).

The schema checks each field on its own; these are the rules that tie fields together, so a config
that cannot work stops before any job runs, with the keys to change.
"""

from __future__ import annotations

from typing import Any

NEEDS_OPTIONS = ("teacher", "policy", "files")
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
    if trained < rows:
        # SFT trains on tokens.h5, whose rows are up to convert.max_length tokens long.
        problems.append(
            f"sft.train.max_length ({trained}) < convert.max_length ({rows}): rows of tokens.h5 up "
            f"to {rows} tokens would be cut during training; raise sft.train.max_length or lower "
            "convert.max_length"
        )
    problems += loss_problems(config["dpo"]["loss_type"], config["dpo"]["loss_weights"])
    return problems


def check_config(config: dict[str, Any]) -> None:
    problems = config_problems(config)
    if problems:
        raise ValueError("config: " + "\n  ".join(["the configuration cannot work:", *problems]))
