"""One home per default (config/schema.yaml, filled in by Snakemake's validate) and the cross-field checks."""

import copy

import pytest
import yaml

from conftest import ROOT, snakemake
from sftdpo.config_checks import check_config, coerce_by_schema, config_problems

SCHEMA = str(ROOT / "config" / "schema.yaml")
TRAIN = {"max_steps": 10, "batch_size": 2, "learning_rate": 1e-3}
# Only what the schema requires: everything else comes from its defaults.
MINIMAL = {
    "seed": 0,
    "task": {"name": "arithmetic", "n_problems": 10},
    "model": {"name_or_path": "scratch"},
    "collect": {"expert": "program", "shards": 1},
    "validate": {"gates": {}},
    "convert": {},
    "split": {},
    "sft": {"train": dict(TRAIN)},
    "rollouts": {},
    "preferences": {},
    "dpo": {"train": dict(TRAIN)},
    "evaluate": {},
    "report": {},
}


def filled(config):
    from snakemake.utils import validate

    config = copy.deepcopy(config)
    validate(config, SCHEMA)
    return config


def test_the_schema_fills_every_default_the_rules_read():
    config = filled(MINIMAL)
    assert config["sft"]["resources"] == {"runtime": 120, "gpu": 1, "threads": 2, "mem_mb": 8000}
    assert config["dpo"]["resources"]["runtime"] == 120
    assert (
        config["rollouts"]["resources"]
        == config["evaluate"]["resources"]
        == {"runtime": 60, "gpu": 1, "threads": 2, "mem_mb": 8000}
    )
    assert config["sft"]["launch"]["deepspeed_config"] == "config/deepspeed/zero2.json"
    assert config["sft"]["lora"] is None and config["dpo"]["lora"] is None
    assert config["collect"]["flush_every"] == 100 and config["collect"]["program"] == {"error_rate": 0.05}
    assert config["split"]["fractions"] == {"train": 0.7, "val": 0.2, "test": 0.1}
    assert config["sft"]["train"]["max_length"] == 256 and config["convert"]["max_length"] == 256
    assert config["task"]["arithmetic"]["max_ops"] == 3 and config["task"]["gsm8k"]["path"] is None
    assert config_problems(config) == []
    # A LoRA block gets its optional keys too (inside oneOf).
    lora = filled({**MINIMAL, "dpo": {"train": TRAIN, "lora": {"r": 4, "alpha": 8}}})["dpo"]["lora"]
    assert lora == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


def test_the_embedded_default_is_consistent():
    assert config_problems(filled(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))) == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"collect": {"expert": "teacher", "shards": 1}}, "collect.expert is 'teacher' but collect.teacher is not set"),
        ({"task": {"name": "gsm8k", "n_problems": 5}}, "task.gsm8k.path is not set"),
        ({"convert": {"max_length": 300}}, r"sft.train.max_length \(256\) < convert.max_length \(300\)"),
        (
            {"sft": {"train": {**TRAIN, "logging_steps": 20, "save_steps": 50}}},
            r"sft.train.save_steps \(50\) is not a multiple of sft.train.logging_steps \(20\).*\(e.g. 60\)",
        ),
        (
            {"dpo": {"train": TRAIN, "variants": {"long": {"train": {"save_steps": 15}}}}},
            r"dpo.variants.long \(overlaid on dpo\): dpo.train.save_steps \(15\) is not a multiple",
        ),
    ],
)
def test_cross_field_problems_stop_with_the_keys_to_change(change, message):
    config = filled({**MINIMAL, **change})
    with pytest.raises(ValueError, match=message):
        check_config(config)


def test_command_line_values_are_read_by_schema_type(tmp_path):
    """`--config dpo='{beta: 0.2}'` gives strings (YAML's BaseLoader): they are read as the schema's types."""
    given = {"dpo": {"beta": "0.2", "loss_weights": ["1", "0.5"], "lora": {"r": "8"}}, "sft": {"lora": "null"},
             "seed": "3", "evaluate": {"batch_size": "many"}, "model": {"name_or_path": "123"}}  # fmt: skip
    assert coerce_by_schema(given, SCHEMA) == {
        "dpo": {"beta": 0.2, "loss_weights": [1, 0.5], "lora": {"r": 8}}, "sft": {"lora": None},
        "seed": 3, "evaluate": {"batch_size": "many"}, "model": {"name_or_path": "123"},
    }  # fmt: skip
    out = snakemake("-n", "results/dpo/adapter", "--config", "dpo={beta: 0.2, train: {max_steps: 7}}", cwd=tmp_path)
    assert "dpo" in out.stdout
    bad = snakemake("-n", "--config", "dpo={beta: high}", cwd=tmp_path, check=False)
    assert bad.returncode != 0 and "dpo.beta = 'high': 'high' is not of type 'number'" in bad.stdout + bad.stderr
