"""Supervised fine-tuning with TRL's SFTTrainer on the tokenized train split (loss on completions)."""

from __future__ import annotations

import logging
from typing import Any

from sftdpo.io import file_digest, read_parquet
from sftdpo.modeling import load_model, load_tokenizer
from sftdpo.tables import read_token_rows
from sftdpo.training import checkpoint_dir, lora_config, run_training, trainer_config, write_metrics

log = logging.getLogger(__name__)


def train_sft(
    *,
    base_dir: str,
    train_path: str,
    val_path: str,
    tokens_path: str,
    out_dir: str,
    metrics_path: str,
    curve_path: str,
    work_dir: str,
    train: dict[str, Any],
    lora: dict[str, Any] | None,
    eval_rows: int,
    seed: int,
) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(base_dir)
    model = load_model(base_dir)
    train_rows = read_parquet(train_path)["token_row"].tolist()
    val_rows = read_parquet(val_path)["token_row"].tolist()[:eval_rows]
    train_examples, val_examples = read_token_rows(tokens_path, train_rows, val_rows)
    train_ds = Dataset.from_list(train_examples)
    val_ds = Dataset.from_list(val_examples) if val_rows else None
    settings = {"train": train, "lora": lora, "seed": seed, "eval_rows": eval_rows}
    inputs = {"base model": base_dir, "train split": train_path, "val split": val_path, "tokens": tokens_path}
    ckpt = checkpoint_dir(work_dir, {**settings, "inputs": [file_digest(p) for p in inputs.values()]}, "sftdpo.sft")
    args = trainer_config(
        SFTConfig,
        "sft.train",
        train,
        ckpt,
        seed,
        evaluate=val_ds is not None,
        completion_only_loss=True,
        packing=False,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=lora_config(lora) if lora else None,
    )
    log.info("SFT: %d train rows, %d val rows, %s", len(train_ds), len(val_rows), "LoRA" if lora else "full")
    metrics = run_training(trainer, ckpt, out_dir, tokenizer, "sft", inputs=inputs, config=settings)
    metrics.update(n_train=len(train_ds), n_val=len(val_rows), lora=lora)
    evals = [h["eval_loss"] for h in metrics["log_history"] if "eval_loss" in h]
    metrics["final_eval_loss"] = evals[-1] if evals else None
    if metrics["train_seconds_this_run"] > 0:
        metrics["tokens_per_second"] = metrics["num_input_tokens_seen"] / metrics["train_seconds_this_run"]
    write_metrics(metrics, metrics_path, curve_path, ["loss", "eval_loss"], "SFT loss")
    return metrics
