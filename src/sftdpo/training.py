"""What SFT and DPO share: trainer arguments, checkpoint resume, saving, metrics and curves.

Checkpoints live in a work directory keyed by a hash of the stage's parameters, inputs and code,
outside the declared outputs: Snakemake's cleanup of incomplete outputs never deletes them, a rerun
of a killed job resumes from the last one, and any change starts afresh. They are deleted once the
final model is saved, so `--forcerun` retrains.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from sftdpo.fingerprint import code_fingerprint
from sftdpo.io import atomic_path, resume_dir, write_json
from sftdpo.modeling import device, record_base, use_bf16
import sftdpo.pages as pages
from sftdpo.plots import plot_curve
from sftdpo.progress import console, duration, rate_and_eta

log = logging.getLogger(__name__)


def lora_config(lora: dict[str, Any]):
    """peft's LoraConfig from a stage's `lora` config block (SFT's adapter, DPO's adapter on a full model)."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )


def checkpoint_dir(work_dir: str, params: dict[str, Any], code_module: str) -> Path:
    """`work_dir/<hash of params, inputs and the stage's code>`: resumable only by an identical rerun."""
    return resume_dir(work_dir, {**params, "code": code_fingerprint(code_module)})


def last_checkpoint(path: Path) -> str | None:
    """The newest complete checkpoint: one killed mid-save has no trainer_state.json yet and is skipped."""
    complete = [p for p in path.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    if not complete:
        return None
    found = str(max(complete, key=lambda p: int(p.name.rpartition("-")[2])))
    log.info("resuming from %s", found)
    return found


def run_name(label: str, output_dir: Path) -> str:
    """`<stage>-<8 hex digits>`: the digest is the run's checkpoint directory's (a hash of its settings, inputs and
    code), so the tracker's run and the run's work/ directory name each other, and another config is another run."""
    return f"{label}-{Path(output_dir).name[:8]}"


def trainer_kwargs(train: dict[str, Any], output_dir: Path, seed: int, *, evaluate: bool) -> dict[str, Any]:
    """Arguments common to SFTConfig and DPOConfig, from a stage's `train` config block."""
    on_gpu = device() == "cuda"
    return dict(
        output_dir=str(output_dir),
        max_steps=train["max_steps"],
        per_device_train_batch_size=train["batch_size"],
        gradient_accumulation_steps=train["grad_accum"],
        learning_rate=train["learning_rate"],
        lr_scheduler_type=train["lr_scheduler"],
        warmup_steps=train["warmup_steps"],
        weight_decay=train["weight_decay"],
        logging_steps=train["logging_steps"],
        save_steps=train["save_steps"],
        save_total_limit=2,
        seed=seed,
        data_seed=seed,
        use_cpu=not on_gpu,
        bf16=use_bf16(train["precision"]),
        activation_checkpointing=bool(train["activation_checkpointing"]),
        report_to=train["report_to"],
        dataloader_num_workers=0,
        disable_tqdm=False,
        max_length=train["max_length"],
        # Held-out loss/metrics every eval_steps when there is an eval set (SFT: val rows; DPO: val pairs).
        eval_strategy="steps" if evaluate else "no",
        eval_steps=train["eval_steps"],
        per_device_eval_batch_size=train["batch_size"],
    )


def log_line(label: str, step: int, max_steps: int, logs: dict[str, Any], rate: str) -> str:
    """`sft step 40/200 loss 1.702 eval_loss 1.65 | 1.9 steps/s, ETA 1m24s` from a Trainer's log record."""
    shown = [f"{key} {logs[key]:.4g}" for key in CONSOLE_KEYS if isinstance(logs.get(key), (int, float))]
    return f"{label} step {step}/{max_steps} " + " ".join(shown) + f" | {rate}"


# What a training log line shows, when the record has it (SFT, DPO, and their held-out evaluations).
CONSOLE_KEYS = ("loss", "eval_loss", "rewards/accuracies", "eval_rewards/accuracies", "rewards/margins")


def console_progress(label: str):
    """Trainer callbacks: one compact console line per logging step, and tqdm bars without the dicts of
    numbers that transformers writes beside them (the bars stay in the rule's log)."""
    from transformers import ProgressCallback, TrainerCallback

    class BarsOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    class ConsoleLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step, self.started = state.global_step, time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            # The run's summary record, and records without a console figure (the curriculum's own).
            if not state.is_world_process_zero or "train_loss" in logs or not any(k in logs for k in CONSOLE_KEYS):
                return
            done = state.global_step - self.first_step
            rate = rate_and_eta(done, state.max_steps - self.first_step, time.monotonic() - self.started, "steps")
            console(log_line(label, state.global_step, state.max_steps, logs, rate))

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                elapsed = duration(time.monotonic() - self.started)
                console(f"{label} done: {state.global_step}/{state.max_steps} steps in {elapsed}")

    return BarsOnly, ConsoleLog()


def no_last_step_checkpoint():
    """A TrainerCallback that drops the checkpoint Trainer writes at the last step (`DefaultFlowCallback` saves at
    the end of training): `run_training` saves the model right after and deletes the checkpoints, so that one would
    be written for nothing, optimizer state included (GBs for a real model). A job killed in between resumes from
    the checkpoint before it."""
    from transformers import TrainerCallback

    class NoLastStepCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False

    return NoLastStepCheckpoint()


def trainer_config(config_class, key: str, train: dict[str, Any], output_dir: Path, seed: int, *, evaluate: bool,
                   **stage: Any):  # fmt: skip
    """`config_class` (TRL's SFTConfig or DPOConfig) from the stage's `train` block, the stage's own arguments
    and `train.extra`: any other field of the class, checked against its fields (`key` names the block)."""
    args = {
        **trainer_kwargs(train, output_dir, seed, evaluate=evaluate),
        "run_name": run_name(key.partition(".")[0], output_dir),
        "project": "sftdpo",  # trackio's project
        **stage,
    }
    extra = train.get("extra") or {}
    check_extra(config_class, f"{key}.extra", extra, set(args))
    return config_class(**args, **extra)


def check_extra(config_class, key: str, extra: dict[str, Any], set_by_sftdpo: set[str]) -> None:
    import dataclasses
    import difflib

    fields = {f.name for f in dataclasses.fields(config_class)}
    problems = []
    for name in sorted(extra):
        if name in set_by_sftdpo:
            problems.append(f"{name} is set by sftdpo from its own keys (see config/schema.yaml); set it there")
        elif name not in fields:
            close = difflib.get_close_matches(name, fields, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"{name} is not a field of TRL's {config_class.__name__}{hint}")
    if problems:
        raise ValueError(f"{key}: " + "; ".join(problems))


# Where trackers keep their local files (under the run's tracking directory), unless the environment says otherwise.
TRACKER_HOMES = {
    "wandb": ("WANDB_DIR", lambda root: str(root)),
    "mlflow": ("MLFLOW_TRACKING_URI", lambda root: (root / "mlruns").resolve().as_uri()),
}


@contextlib.contextmanager
def tracking(trainer, tracking_dir: str):
    """The trainer's trackers (`report_to`) write under `tracking_dir`: TensorBoard's event files in
    `<tracking_dir>/<run name>/`, W&B's and MLflow's local stores beside them (WANDB_DIR and MLFLOW_TRACKING_URI
    set by the user win). Yields the TensorBoard directory; the environment is restored afterwards."""
    root = Path(tracking_dir)
    board = root / trainer.args.run_name
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback" and callback.logging_dir is None:
            callback.logging_dir = str(board)  # read at train begin; the default is inside work/, deleted after
    reporting = set(trainer.args.report_to or [])
    saved = dict(os.environ)
    for tracker, (variable, home) in TRACKER_HOMES.items():
        if tracker in reporting and variable not in os.environ:
            root.mkdir(parents=True, exist_ok=True)
            os.environ[variable] = home(root)
    try:
        yield board
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """The objects alive on entry (torch's, transformers', the data's: millions) out of the cyclic garbage collector's
    sight within the block (`gc.freeze`). Trainer collects once before its first step (accelerate's `free_memory`),
    and a full pass walks the whole heap: 0.22 s, ~4% of the default's SFT. They are handed back on exit, so nothing
    that was garbage on entry is kept for good."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_training(
    trainer,
    ckpt_dir: Path,
    out_dir: str,
    tokenizer,
    label: str,
    *,
    inputs: dict[str, str],
    config: dict[str, Any],
    tracking_dir: str,
) -> dict[str, Any]:
    """Train (resuming if a checkpoint exists), then save model + tokenizer + a model card atomically.
    `inputs` (name -> path) and `config` (the stage's settings) go into the card; trackers write under
    `tracking_dir`."""
    import torch
    from transformers import ProgressCallback

    bars, console_log = console_progress(label)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(bars)
    trainer.add_callback(console_log)
    trainer.add_callback(no_last_step_checkpoint())  # last: after every callback that may ask for a save
    resume = last_checkpoint(ckpt_dir)
    started = time.time()
    with tracking(trainer, tracking_dir), frozen_heap():
        result = trainer.train(resume_from_checkpoint=resume)
    elapsed = time.time() - started
    state = trainer.state
    with atomic_path(out_dir) as tmp:
        trainer.save_model(str(tmp))
        record_base(tmp, out_dir)
        tokenizer.save_pretrained(str(tmp))
        figures = {"steps": state.global_step, "train loss": result.training_loss, "resumed from": resume}
        (tmp / "README.md").write_text(training_card(label, tmp, inputs, figures, config), encoding="utf-8")
    # The output holds the result now; checkpoints (GBs for real models) are only a resume point.
    shutil.rmtree(ckpt_dir)
    return {
        "global_step": state.global_step,
        "resumed_from": resume,
        "train_loss": result.training_loss,
        "train_seconds_this_run": elapsed,
        "num_input_tokens_seen": int(state.num_input_tokens_seen or 0),
        # The numerics depend on it (reduction order); sftdpo.runner sets it from <stage>.resources.threads.
        "torch_threads": torch.get_num_threads(),
        "log_history": state.log_history,
        "run_name": trainer.args.run_name,
        "report_to": [r for r in trainer.args.report_to or [] if r != "none"],
    }


def training_card(label: str, model_dir: Path, inputs: dict[str, str], figures: dict[str, Any], config: dict[str, Any]):
    """The model card of a trained model or adapter (instead of PEFT's blank template)."""
    adapter = (model_dir / "adapter_config.json").exists()
    what = "a PEFT (LoRA) adapter over the model in the input above" if adapter else "a full model"
    return pages.model_card(
        title=f"sftdpo: the {label} model",
        intro=f"Trained by the `{label}` stage of an sftdpo run: {what}. `results/export/<stage>/` holds it merged, "
        "loadable without sftdpo.",
        tags=[label, "peft" if adapter else "full"],
        tables=[
            pages.Table("Inputs", ["input", "path"], [[name, path] for name, path in inputs.items()]),
            pages.Table("Training", ["figure", "value"], [[k, pages.fmt(v, ".4g")] for k, v in figures.items()]),
        ],
        config=config,
    )


def write_metrics(
    metrics: dict[str, Any], metrics_path: str, curve_path: str, curve_keys: list[str], title: str, **marks: Any
):
    """metrics.json and the loss curve; `marks`: what plot_curve draws on it (a curriculum's stages and events)."""
    plot_curve(metrics["log_history"], curve_keys, curve_path, title, **marks)
    write_json(metrics, metrics_path)
