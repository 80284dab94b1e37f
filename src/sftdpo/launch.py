"""Run SFT or DPO in-process, or across GPUs with `accelerate launch` (DeepSpeed ZeRO-2 by default).

The sft and dpo rules' scripts call `run_stage(train_sft, kwargs, ...)` with the stage's function.
With `resources.gpu` > 1 and more than one GPU visible it writes the arguments to a JSON file and runs

    accelerate launch --config_file config/deepspeed/accelerate.yaml --use_deepspeed \
        --deepspeed_config_file config/deepspeed/zero2.json --num_processes N --num_machines 1 \
        --main_process_port P --mixed_precision bf16 \
        -m sftdpo.launch sftdpo.sft:train_sft work/sft/launch/train_sft.json

one process a GPU (`deepspeed_config: null` gives plain DDP with `--multi_gpu`). Every rank trains;
rank 0 writes the declared outputs, the other ranks write theirs under `<work_dir>/rank<r>/`, so no
two processes write the same file. Otherwise (one GPU, or none: the CPU default) the stage runs
in-process, exactly as before.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ACCELERATE_CONFIG = "config/deepspeed/accelerate.yaml"
DEFAULT_DEEPSPEED_CONFIG = "config/deepspeed/zero2.json"
# Per-rank outputs: the arguments a non-zero rank redirects into its own directory.
OUTPUT_ARGS = ("out_dir", "metrics_path", "curve_path", "curriculum_path")


def deepspeed_zero2_config(*, offload_optimizer: bool = False) -> dict[str, Any]:
    """DeepSpeed ZeRO stage 2: optimizer states and gradients sharded across GPUs.

    "auto" values are filled by the Hugging Face Trainer from its arguments (batch size, gradient
    accumulation, clipping, bf16), so one file serves SFT and DPO at any batch size.
    """
    return {
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 2,
            "offload_optimizer": {"device": "cpu" if offload_optimizer else "none", "pin_memory": True},
            "allgather_partitions": True,
            "allgather_bucket_size": 200_000_000,
            "overlap_comm": True,
            "reduce_scatter": True,
            "reduce_bucket_size": "auto",
            "contiguous_gradients": True,
        },
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }


def resolve(path: str | None) -> str | None:
    """A config path: as given if it exists (working directory), else relative to the repository."""
    if path is None:
        return None
    if Path(path).exists():
        return str(Path(path).resolve())
    if not Path(path).is_absolute() and (REPO / path).exists():
        return str(REPO / path)
    raise FileNotFoundError(f"launch config {path} not found in {Path.cwd()} or {REPO}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes(configured_gpus: int, visible_gpus: int) -> int:
    """Processes to launch: 0 means in-process (one GPU, or the CPU when none is visible)."""
    n = min(int(configured_gpus or 0), visible_gpus)
    if configured_gpus and configured_gpus > 1 and visible_gpus < configured_gpus:
        log.warning(
            "resources.gpu is %d but %d GPU(s) are visible: %s",
            configured_gpus,
            visible_gpus,
            f"launching {n} processes" if n > 1 else "training in-process",
        )
    return n if n > 1 else 0


def function_name(function: Callable[..., Any]) -> str:
    """`module:function`, how the launched processes find the stage's function."""
    return f"{function.__module__}:{function.__qualname__}"


def import_function(name: str) -> Callable[..., Any]:
    import importlib

    module, _, attr = name.partition(":")
    if not module.startswith("sftdpo.") or not attr:
        raise ValueError(f"expected an sftdpo function as module:function, got {name!r}")
    return getattr(importlib.import_module(module), attr)


def accelerate_command(
    function: str,
    args_path: str,
    *,
    num_processes: int,
    launch: dict[str, Any],
    mixed_precision: str = "bf16",
    port: int | None = None,
    accelerate: str | None = None,
) -> list[str]:
    """The `accelerate launch` command line running `function` (module:function; nothing run)."""
    if num_processes < 2:
        raise ValueError(f"accelerate launch needs >= 2 processes here, got {num_processes}")
    exe = accelerate or str(Path(sys.executable).with_name("accelerate"))
    if not Path(exe).exists():
        exe = shutil.which("accelerate") or exe
    cmd = [exe, "launch", "--config_file", resolve(launch.get("accelerate_config") or DEFAULT_ACCELERATE_CONFIG)]
    deepspeed = launch.get("deepspeed_config", DEFAULT_DEEPSPEED_CONFIG)
    if deepspeed:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", resolve(deepspeed)]
    else:
        cmd += ["--multi_gpu"]
    cmd += [
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(port or launch.get("main_process_port") or free_port()),
        "--mixed_precision",
        mixed_precision,
        "-m",
        "sftdpo.launch",
        function,
        str(args_path),
    ]
    return cmd


def run_stage(
    function: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    gpus: int,
    launch: dict[str, Any] | None,
    precision: str,
    log_stream: Any = None,
) -> Any:
    """`function(**kwargs)` in-process, or under `accelerate launch` when more than one GPU is configured
    and visible (then the processes import `function` by name and rank 0 returns its metrics)."""
    launch = dict(launch or {})
    try:
        import torch

        visible = torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is a dependency
        visible = 0
    n = processes(gpus, visible)
    if not n:
        return function(**kwargs)
    from sftdpo.modeling import use_bf16

    name = function_name(function)
    args_path = Path(kwargs["work_dir"]) / "launch" / f"{function.__name__}.json"
    args_path.parent.mkdir(parents=True, exist_ok=True)
    args_path.write_text(json.dumps(kwargs, indent=2, sort_keys=True, default=str) + "\n")
    cmd = accelerate_command(
        name, str(args_path), num_processes=n, launch=launch, mixed_precision="bf16" if use_bf16(precision) else "no"
    )
    log.info("launching %d processes: %s", n, " ".join(cmd))
    stream = log_stream or sys.stderr
    stream.flush()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, stdout=stream, stderr=stream, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{name}: `accelerate launch` with {n} processes exited with {proc.returncode}; "
            "the ranks' output is in this rule's log above"
        )
    return json.loads(Path(kwargs["metrics_path"]).read_text())


def rank_kwargs(kwargs: dict[str, Any], rank: int) -> dict[str, Any]:
    """Rank 0 writes the declared outputs; rank r > 0 writes its own copies under <work_dir>/rank<r>/."""
    if rank == 0:
        return dict(kwargs)
    own = Path(kwargs["work_dir"]) / f"rank{rank}"
    return {**kwargs, **{k: str(own / Path(kwargs[k]).name) for k in OUTPUT_ARGS if k in kwargs}}


def main(argv: list[str] | None = None) -> Any:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit("usage: python -m sftdpo.launch sftdpo.<module>:<function> ARGS.json")
    name, args_path = argv
    function = import_function(name)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    kwargs = rank_kwargs(json.loads(Path(args_path).read_text()), rank)
    log.info("%s on rank %d of %s", name, rank, os.environ.get("WORLD_SIZE", "1"))
    return function(**kwargs)


if __name__ == "__main__":
    main()
