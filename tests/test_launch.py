"""Multi-GPU launch (sftdpo.launch): the `accelerate launch` command line and DeepSpeed config, checked by
accelerate's own parser and plugin on CPU; the per-rank outputs; the in-process path; a real run of
`python -m sftdpo.launch` and of `accelerate launch -m sftdpo.launch` on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import sft_split_inputs, train_settings
from sftdpo.launch import (
    REPO,
    accelerate_command,
    deepspeed_zero2_config,
    function_name,
    import_function,
    processes,
    rank_kwargs,
    resolve,
    run_stage,
)
from sftdpo.sft import train_sft


@pytest.mark.parametrize(
    "configured, visible, expected",
    [
        (1, 0, 0),
        (1, 1, 0),
        (1, 8, 0),
        (4, 0, 0),
        (2, 1, 0),
        (4, 4, 4),
        (4, 2, 2),
        (8, 4, 4),
        (0, 2, 0),
    ],
)
def test_processes_launch_only_for_more_than_one_gpu(configured, visible, expected):
    assert processes(configured, visible) == expected


def test_shipped_deepspeed_and_accelerate_configs():
    shipped = json.loads((REPO / "config/deepspeed/zero2.json").read_text())
    assert shipped == deepspeed_zero2_config()
    assert shipped["zero_optimization"]["stage"] == 2 and shipped["bf16"] == {"enabled": "auto"}
    assert shipped["train_micro_batch_size_per_gpu"] == shipped["gradient_accumulation_steps"] == "auto"
    assert deepspeed_zero2_config(offload_optimizer=True)["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "config/deepspeed/accelerate.yaml"))
    assert config.distributed_type.value == "DEEPSPEED" and config.mixed_precision is None
    assert (REPO / config.deepspeed_config["deepspeed_config_file"]).exists()


def test_accelerate_command_is_accepted_by_accelerate(tmp_path, monkeypatch):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    cmd = accelerate_command(
        "sftdpo.sft:train_sft", "work/sft/launch/train_sft.json", num_processes=4, launch={}, port=29555
    )
    assert cmd[1:] == [
        "launch",
        "--config_file",
        str(REPO / "config/deepspeed/accelerate.yaml"),
        "--use_deepspeed",
        "--deepspeed_config_file",
        str(REPO / "config/deepspeed/zero2.json"),
        "--num_processes",
        "4",
        "--num_machines",
        "1",
        "--main_process_port",
        "29555",
        "--mixed_precision",
        "bf16",
        "-m",
        "sftdpo.launch",
        "sftdpo.sft:train_sft",
        "work/sft/launch/train_sft.json",
    ]
    assert Path(cmd[0]).name == "accelerate"
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[2:]))
    assert args.use_deepspeed and args.num_processes == 4 and args.module
    assert args.training_script == "sftdpo.launch" and args.training_script_args == [
        "sftdpo.sft:train_sft",
        "work/sft/launch/train_sft.json",
    ]
    assert args.deepspeed_config_file == str(REPO / "config/deepspeed/zero2.json")  # the CLI wins over the file
    # The environment accelerate gives each rank makes a valid ZeRO-2 plugin (no GPU or deepspeed needed).
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key in (
        "ACCELERATE_USE_DEEPSPEED",
        "ACCELERATE_DEEPSPEED_CONFIG_FILE",
        "ACCELERATE_CONFIG_DS_FIELDS",
        "ACCELERATE_MIXED_PRECISION",
    ):
        monkeypatch.setenv(key, env[key])
    assert DeepSpeedPlugin().zero_stage == 2

    ddp = accelerate_command(
        "sftdpo.dpo:train_dpo",
        "a.json",
        num_processes=2,
        launch={"deepspeed_config": None},
        port=1,
        mixed_precision="no",
    )
    assert "--multi_gpu" in ddp and "--use_deepspeed" not in ddp and ddp[-2:] == ["sftdpo.dpo:train_dpo", "a.json"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(ddp[2:]))
    assert args.multi_gpu and not args.use_deepspeed and args.num_processes == 2
    with pytest.raises(FileNotFoundError, match="launch config nowhere.json not found"):
        accelerate_command(
            "sftdpo.sft:train_sft", "a.json", num_processes=2, launch={"deepspeed_config": "nowhere.json"}
        )
    with pytest.raises(ValueError, match="needs >= 2 processes"):
        accelerate_command("sftdpo.sft:train_sft", "a.json", num_processes=1, launch={})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.json").write_text("{}")
    assert resolve("mine.json") == str(tmp_path / "mine.json")  # the working directory first
    assert resolve("config/deepspeed/zero2.json") == str(REPO / "config/deepspeed/zero2.json")


def test_rank_kwargs_keep_ranks_apart():
    kwargs = {
        "out_dir": "results/sft/model",
        "metrics_path": "results/sft/metrics.json",
        "curve_path": "results/sft/loss.png",
        "work_dir": "work/sft",
        "seed": 0,
    }
    assert rank_kwargs(kwargs, 0) == kwargs
    assert rank_kwargs(kwargs, 2) == {
        **kwargs,
        "out_dir": "work/sft/rank2/model",
        "metrics_path": "work/sft/rank2/metrics.json",
        "curve_path": "work/sft/rank2/loss.png",
    }


TRAIN = train_settings()


@pytest.fixture(scope="module")
def sft_inputs(tmp_path_factory):
    inputs = sft_split_inputs(tmp_path_factory.mktemp("launch"), 40, {"train": 0.8, "val": 0.1, "test": 0.1})
    return dict(**inputs, train=TRAIN, lora=None, eval_rows=2, seed=0)


def outputs(tmp_path, name):
    d = tmp_path / name
    return dict(
        out_dir=str(d / "adapter"),
        metrics_path=str(d / "metrics.json"),
        curve_path=str(d / "loss.png"),
        curriculum_path=str(d / "curriculum.json"),
        work_dir=str(d / "work"),
        tracking_dir=str(d / "tracking"),
    )


def test_several_gpus_configured_but_none_visible_trains_in_process(tmp_path, sft_inputs):
    kwargs = {**sft_inputs, **outputs(tmp_path, "inproc")}
    metrics = run_stage(train_sft, kwargs, gpus=4, launch={}, precision="auto")
    assert metrics["global_step"] == 2 and (tmp_path / "inproc/adapter/config.json").exists()
    assert function_name(train_sft) == "sftdpo.sft:train_sft" and import_function("sftdpo.sft:train_sft") is train_sft
    assert not (tmp_path / "inproc/work/launch").exists()  # no accelerate launch, no args file


def test_module_entry_point_and_accelerate_cli_on_cpu(tmp_path, sft_inputs):
    kwargs = {**sft_inputs, **outputs(tmp_path, "ranks")}
    args = tmp_path / "args.json"
    args.write_text(json.dumps(kwargs))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "RANK": "1"}
    # Rank 1 (RANK alone: its paths without a process group): trains, but writes only under work_dir/rank1.
    subprocess.run(
        [sys.executable, "-m", "sftdpo.launch", "sftdpo.sft:train_sft", str(args)],
        env=env,
        check=True,
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    assert json.loads((tmp_path / "ranks/work/rank1/metrics.json").read_text())["global_step"] == 2
    assert not (tmp_path / "ranks/adapter").exists() and not (tmp_path / "ranks/metrics.json").exists()
    # The real accelerate CLI with one CPU process: rank 0 writes the declared outputs.
    env = {k: v for k, v in env.items() if k != "RANK"}
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    proc = subprocess.run(
        [
            accelerate,
            "launch",
            "--cpu",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "-m",
            "sftdpo.launch",
            "sftdpo.sft:train_sft",
            str(args),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ranks/metrics.json").read_text())
    assert metrics["global_step"] == 2 and (tmp_path / "ranks/adapter/model.safetensors").exists()
    with pytest.raises(SystemExit, match="usage: python -m sftdpo.launch"):
        from sftdpo.launch import main

        main(["x.json"])
    with pytest.raises(ValueError, match="expected an sftdpo function"):
        main(["os:system", "x.json"])
