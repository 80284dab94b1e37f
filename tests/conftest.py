import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = ROOT / "tests" / "config" / "tiny.yaml"
TINY_SFT_STEPS = yaml.safe_load(TINY.read_text())["sft"]["train"]["max_steps"]
# The pipeline's rules in DAG order, and the ones that run on a GPU when one is there.
RULES = ["base_model", "problems", "collect", "merge_demos", "validate_shard", "validate", "convert_shard", "convert",
         "split", "sft", "rollouts", "merge_rollouts", "preferences", "dpo", "evaluate", "evaluate_val", "report",
         "all"]  # fmt: skip
GPU_RULES = {"sft", "rollouts", "dpo", "evaluate", "evaluate_val"}
# Rules that only run with dpo.variants or dpo.rounds > 1 set, and the config section sizing each GPU rule.
OPTIONAL_GPU_RULES = {"dpo_variant", "dpo_round", "rollouts_round"}
OPTIONAL_RULES = OPTIONAL_GPU_RULES | {"merge_rollouts_round", "preferences_round"}
STAGE_OF_RULE = {"evaluate_val": "evaluate", "dpo_variant": "dpo", "dpo_round": "dpo", "rollouts_round": "rollouts"}


SLURM_TESTS = ROOT / "tests" / "slurm"
START_CLUSTER_TIMEOUT = 900  # from nothing (apt-get install) ~20-60 s, with the daemons installed ~6 s


def start_slurm_test_cluster(log_path: Path) -> int | str:
    """Run tests/slurm/start-cluster.sh (idempotent), its output to `log_path`; its exit code or "timeout"."""
    with open(log_path, "w") as log:
        try:
            return subprocess.run(
                ["bash", str(SLURM_TESTS / "start-cluster.sh")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=START_CLUSTER_TIMEOUT,
            ).returncode
        except subprocess.TimeoutExpired:
            return "timeout"


def scontrol_ping() -> subprocess.CompletedProcess | None:
    """`scontrol ping` (answers at once, exit 0 when a controller answers); None without Slurm's client."""
    if shutil.which("scontrol") is None:
        return None
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True)


@pytest.fixture(scope="session", autouse=True)
def slurm_controller_answers(tmp_path_factory):
    """Bring the Slurm test cluster up before the first test when Slurm's client is installed and no
    controller answers.  Why: every snakemake command imports the Slurm executor plugin, which asks the
    controller for MinJobAge (`scontrol show config`, 10 s timeout), so each of the suite's snakemake
    calls then waits ~9 s (the suite took 50 min 46 s that way, 26-29 min with the controller up).  Failures to
    start are reported by tests/test_slurm.py, which needs the cluster anyway."""
    ping = scontrol_ping()
    if ping is None or ping.returncode == 0:
        return
    if os.geteuid() != 0:
        warnings.warn("no Slurm controller answers and not root: every snakemake call waits ~9 s", stacklevel=1)
        return
    rc = start_slurm_test_cluster(tmp_path_factory.mktemp("slurm_controller") / "start-cluster.out")
    if rc != 0:
        warnings.warn(f"tests/slurm/start-cluster.sh exit {rc}: every snakemake call may wait ~9 s", stacklevel=1)


def snakemake(*args, cwd, check=True, timeout=1800, env=None):
    """Run the snakemake CLI on this repo's Snakefile in `cwd`; returns the CompletedProcess."""
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), *map(str, args)]
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the "Job stats" table of `snakemake -n` ({} when nothing is to be done)."""
    if "Job stats:" not in output:
        return {}
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole DAG on the tiny test config, run once through the snakemake CLI."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    proc = snakemake("-c2", "--configfile", TINY, cwd=workdir)
    return workdir, proc


@pytest.fixture
def finished(tiny_run, tmp_path):
    """A private copy of the finished tiny run (outputs, mtimes and Snakemake's metadata)."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run[0], workdir, symlinks=True)
    return workdir


# -- small real artifacts for library tests (a tiny model, demonstrations, tokens, splits) ---------------
TINY_SCRATCH = dict(layers=1, hidden_size=16, heads=2, intermediate_size=32, max_positions=64, tokenizer_vocab_size=280)


def train_settings(**changes):
    """A stage's `train` block for a few CPU steps (keys as in config/schema.yaml)."""
    train = dict(
        max_steps=2, batch_size=4, grad_accum=1, learning_rate=1e-3, lr_scheduler="constant", warmup_steps=0,
        weight_decay=0.0, logging_steps=1, save_steps=2, eval_steps=2, precision="auto",
        activation_checkpointing=False, max_length=48, report_to="none",
    )  # fmt: skip
    return {**train, **changes}


def scratch_base_model(out_dir, task, problems, **scratch):
    """A scratch base model whose tokenizer learnt the problems and their solutions; returns its path."""
    from sftdpo.modeling import make_base_model

    make_base_model(
        name_or_path="scratch", out_dir=str(out_dir), scratch={**TINY_SCRATCH, **scratch},
        tokenizer_texts=[p.prompt + "\n" + task.solve(p) for p in problems], trust_remote_code=False, seed=0,
    )  # fmt: skip
    return str(out_dir)


def program_demos(task, problems):
    """Validated demonstrations (the demos table without `correct`/`meta`) solved by the task's program."""
    import pandas as pd

    return pd.DataFrame([
        {"id": p.id, "task": task.name, "difficulty": p.difficulty, "prompt": p.prompt, "completion": task.solve(p),
         "answer": p.answer, "expert": "program"}
        for p in problems
    ])  # fmt: skip


def converted_splits(root, model_dir, task, problems, *, max_length, fractions, system_prompt=None):
    """validated.parquet -> convert (chat.parquet, tokens.h5) -> split, under `root`; returns the paths."""
    from sftdpo.convert import convert
    from sftdpo.io import write_parquet
    from sftdpo.split import split

    write_parquet(program_demos(task, problems), root / "validated.parquet")
    convert(
        validated_path=str(root / "validated.parquet"), model_dir=str(model_dir), chat_path=str(root / "chat.parquet"),
        tokens_path=str(root / "tokens.h5"), report_path=str(root / "convert.json"), max_length=max_length,
        system_prompt=system_prompt,
    )  # fmt: skip
    paths = {s: str(root / f"{s}.parquet") for s in ("train", "val", "test")}
    split(chat_path=str(root / "chat.parquet"), out_paths=paths, report_path=str(root / "split.json"),
          strata=["difficulty"], fractions=fractions, seed=0)  # fmt: skip
    return {**paths, "tokens": str(root / "tokens.h5")}


def sft_split_inputs(root, n_problems, fractions):
    """train_sft's inputs over `n_problems` arithmetic problems: a scratch base model and the converted splits."""
    from sftdpo.tasks import get_task

    task = get_task("arithmetic")
    problems = task.problems(n_problems, seed=0)
    base = scratch_base_model(root / "base", task, problems)
    paths = converted_splits(root, base, task, problems, max_length=48, fractions=fractions)
    return dict(base_dir=base, train_path=paths["train"], val_path=paths["val"], tokens_path=paths["tokens"])


def user_env(extra: dict | None = None, project: Path | None = None) -> dict:
    """The environment of a user after the README's set-up: the project's .venv/bin first on
    PATH, no SFTDPO_* settings left over from the caller. With `project` (a copy of this
    repository), its src/ comes first on PYTHONPATH, as the set-up's editable install of that
    clone would have it (the environment running the tests may have been installed elsewhere)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFTDPO_")}
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    if project is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project / "src"), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """A fresh clone of this working tree after the README's set-up (`.venv` linked to the
    environment running the tests), with shared/ beside it as in CI, and the GSM8K example's
    data/gsm8k linked to shared/datasets/gsm8k."""
    from doc_commands import copy_project

    base = tmp_path_factory.mktemp("clone")
    if (ROOT.parent / "shared").exists():
        (base / "shared").symlink_to(ROOT.parent / "shared")
    project = copy_project(base / "sftdpo")
    link_gsm8k(project)
    return project


GSM8K = ROOT.parent / "shared" / "datasets" / "gsm8k"  # this workplace's copy of openai/grade-school-math


def link_gsm8k(project: Path) -> None:
    """data/gsm8k of a project directory -> the GSM8K copy (what config/examples/gsm8k-qwen.yaml reads)."""
    if GSM8K.exists():
        (project / "data").mkdir(exist_ok=True)
        (project / "data" / "gsm8k").symlink_to(GSM8K)
