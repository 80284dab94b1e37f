"""Supervised fine-tuning with TRL's SFTTrainer on the tokenized train split (loss on completions).

With `curriculum` set, the train rows are drawn by difficulty with the curriculum's current mix
(sftdpo.curriculum) and a callback checks greedy exact-match accuracy on a fixed val subset every interval;
the curriculum's state rides in every checkpoint's trainer_state.json, so a resumed run continues it and draws
the same order.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from sftdpo.curriculum import Curriculum, CurriculumState, DifficultySampler, decide, due, stage_spans, summary
from sftdpo.generation import greedy_verdicts
from sftdpo.io import file_digest, read_parquet, write_json
from sftdpo.modeling import check_rendering, load_model, load_tokenizer
from sftdpo.progress import console
from sftdpo.tables import read_token_rows, right_padded
from sftdpo.training import checkpoint_dir, lora_config, run_training, trainer_config, write_metrics

log = logging.getLogger(__name__)


def sft_trainer(base):
    """`base` (TRL's SFTTrainer) drawing its train rows with a DifficultySampler when one is given, counting the
    tokens of the batches it trains on in this run (`token_counts`, this process's: `batch_tokens`), computing
    its loss through the model's own head where `plain_loss_applies`, and padding its batches with `PaddedBatches`
    where TRL's collator would pad them."""
    from transformers import Trainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class SFTTrainer(base):
        def __init__(self, *args, sampler: DifficultySampler | None = None, **kwargs):
            self.difficulty_sampler = sampler
            self.token_counts: Counter = Counter()
            super().__init__(*args, **kwargs)
            self.plain_loss = plain_loss_applies(self.model, self.args)
            if type(self.data_collator) is DataCollatorForLanguageModeling:  # TRL's own, not one given to it
                self.data_collator = PaddedBatches(self.data_collator)

        def _get_train_sampler(self, train_dataset=None):
            return self.difficulty_sampler or super()._get_train_sampler(train_dataset)

        def training_step(self, model, inputs, *args, **kwargs):
            self.token_counts.update(batch_tokens(inputs))
            return super().training_step(model, inputs, *args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """Trainer's loss (the model's: full logits, transformers' cross-entropy, the same sum over the loss
            tokens divided by `num_items_in_batch`) and TRL's per-step metrics from its logits, where
            `plain_loss` holds and TRL's loss is that plain negative log-likelihood; else TRL's own."""
            other_loss = self.compute_loss_func or self.label_smoother or self.args.loss_type != "nll"
            if not self.plain_loss or other_loss or self.aux_loss_enabled or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, True, num_items_in_batch)
            self.record_token_metrics(outputs.logits, inputs)
            return loss

        def record_token_metrics(self, logits, inputs) -> None:
            """What TRL's compute_loss records each step: the loss tokens' mean `entropy` and `mean_token_accuracy`
            (top-1 prediction right), and in training the tokens seen so far (`num_tokens`, attention-mask ones),
            summed over processes."""
            import torch

            mode = "train" if self.model.training else "eval"
            with torch.no_grad():
                labels = inputs["labels"][:, 1:]
                scored = labels != -100
                log_probs = logits[:, :-1][scored].float().log_softmax(-1)
                sums = torch.stack([
                    scored.sum().float(),
                    -(log_probs.exp() * log_probs).sum(),
                    (log_probs.argmax(-1) == labels[scored]).sum().float(),
                    inputs["attention_mask"].sum().float(),  # padded batches (plain_loss_applies)
                ])  # fmt: skip
            n_scored, entropy, n_right, n_tokens = self.accelerator.gather_for_metrics(sums[None]).sum(0).tolist()
            self._metrics[mode]["entropy"].append(entropy / n_scored if n_scored else 0.0)
            self._metrics[mode]["mean_token_accuracy"].append(n_right / n_scored if n_scored else 0.0)
            if mode == "train":
                self._total_train_tokens += int(n_tokens) // getattr(self, "_tp_size", 1)
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    return SFTTrainer


class PaddedBatches:
    """TRL's collator (`DataCollatorForLanguageModeling`) with its padded batches built in three numpy calls: the
    same tensors (input ids, labels, attention mask; right padding, int64) ~15x sooner than its tensor-a-row padding
    (~1 ms of a default SFT step on the CPU: README, "sftdpo against its peers"). Anything else it does (padding-free
    batches, position ids, packed rows, rows that are not lists) stays TRL's."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        collator = self.collator
        padded = not (collator.padding_free or collator.return_position_ids or "seq_lengths" in examples[0])
        if not padded or not all(isinstance(e["input_ids"], list) for e in examples):
            return collator(examples)
        return padded_batch(examples, collator.pad_token_id, collator.pad_to_multiple_of)


def padded_batch(examples: list[dict[str, Any]], pad_token_id: int, multiple_of: int | None) -> dict[str, Any]:
    """Rows of token ids (and `labels`, else the ids) padded on the right to the longest (rounded up to
    `multiple_of`): `input_ids` (pad_token_id), `labels` (-100) and `attention_mask`, int64 tensors."""
    import torch

    ids = [e["input_ids"] for e in examples]
    labels = [e.get("labels", e["input_ids"]) for e in examples]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    width = int(lengths.max())
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    real = np.arange(width) < lengths[:, None]
    batch = {
        "input_ids": right_padded(ids, real, pad_token_id, np.int64),
        "labels": right_padded(labels, real, -100, np.int64),
        "attention_mask": real.astype(np.int64),
    }
    return {key: torch.from_numpy(array) for key, array in batch.items()}


# The largest float32 logits of a batch (MB) whose loss takes the model's own head on the CPU (`plain_loss_applies`).
PLAIN_LOSS_MAX_LOGITS_MB = 256


def plain_loss_applies(model, args) -> bool:
    """Whether SFT computes its loss through the model's own LM head and loss (Trainer's way) rather than TRL's
    fused head: on the CPU, with padded batches whose full float32 logits stay under PLAIN_LOSS_MAX_LOGITS_MB. TRL's
    head scores the positions in tiles, without the full logits, to spare an accelerator's memory with a large
    vocabulary; on the CPU, with the default's small one, a step took ~7% longer (README, "sftdpo against its
    peers")."""
    if model.device.type != "cpu" or args.max_length is None or getattr(args, "padding_free", False):
        return False
    vocab_size = model.config.get_text_config().vocab_size
    n_logits = max(args.per_device_train_batch_size, args.per_device_eval_batch_size) * args.max_length * vocab_size
    return n_logits * 4 / 2**20 <= PLAIN_LOSS_MAX_LOGITS_MB


def trainer_rows(
    examples: list[dict[str, list[int]]], max_length: int | None, truncation_mode: str
) -> tuple[list[dict[str, list[int]]], list[int]]:
    """What TRL's SFTTrainer would make of tokenized rows (`input_ids`, `completion_mask`) before training
    (`_prepare_dataset`), and the indices of the rows kept: `labels` (the ids, -100 outside the completion), both cut
    to `max_length` as `truncation_mode` says, and rows left without a label dropped. Here in one pass of plain
    Python: TRL's three `datasets.map` passes were about half of `train_sft`'s time before its first step (README,
    "Job times of the default")."""
    if max_length is None:
        cut = slice(None)
    elif truncation_mode == "keep_start":
        cut = slice(max_length)
    elif truncation_mode == "keep_end":
        cut = slice(-max_length, None)
    else:
        raise ValueError(f"sft.train.extra.truncation_mode: {truncation_mode!r} is not keep_start or keep_end")
    rows, kept = [], []
    for i, example in enumerate(examples):
        ids, losses = example["input_ids"][cut], example["completion_mask"][cut]
        if any(losses):
            rows.append({"input_ids": ids, "labels": [token if loss else -100 for token, loss in zip(ids, losses)]})
            kept.append(i)
    return rows, kept


def batch_tokens(inputs: dict[str, Any]) -> dict[str, int]:
    """A training batch's tokens: `real` (not padding), `loss` (those the loss is computed on: labels not -100)
    and `padded` (the batch's whole width, padding included). Padding-free batches have no attention mask: every
    token is real."""
    padded = inputs["input_ids"].numel()
    real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else padded
    return {"real": real, "loss": int((inputs["labels"] != -100).sum()), "padded": padded}


def token_rates(trainer, seconds: float) -> dict[str, Any]:
    """The tokens SFT trained on in this run, summed over processes, and per second of its training."""
    import torch

    counts = torch.tensor([trainer.token_counts[kind] for kind in TOKEN_KINDS], device=trainer.accelerator.device)
    totals = dict(zip(TOKEN_KINDS, trainer.accelerator.reduce(counts, reduction="sum").tolist()))
    rates = {f"{kind}_tokens_per_second": totals[kind] / seconds for kind in TOKEN_KINDS} if seconds > 0 else {}
    return {"tokens_this_run": totals, **rates}


TOKEN_KINDS = ("real", "loss", "padded")


def val_accuracy(model, tokenizer, items: pd.DataFrame, evaluation: dict[str, Any], seed: int) -> dict[str, Any]:
    """Greedy exact-match accuracy of the model being trained on `items`, overall and per difficulty. The RNG
    state and train mode are restored, so a check leaves the training's randomness as it was."""
    import torch

    started = time.monotonic()
    training = model.training
    with torch.random.fork_rng():
        model.eval()
        rows = greedy_verdicts(model, tokenizer, items, seed=seed, desc="curriculum check", **evaluation)
        model.train(training)
    verdicts = pd.DataFrame(rows)
    return {
        "performance": float(verdicts["correct"].mean()),
        "by_difficulty": {str(d): float(v) for d, v in verdicts.groupby("difficulty")["correct"].mean().items()},
        "eval_seconds": time.monotonic() - started,
    }


def curriculum_callback(curriculum: Curriculum, sampler: DifficultySampler, measure):
    """A TrainerCallback that runs the curriculum's checks (`measure(model)` -> accuracy figures), changes the
    sampler's weights, logs every check to the trackers and the console, and saves its state with checkpoints."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class CurriculumCallback(TrainerCallback, ExportableState):
        def __init__(self):
            self.progress = CurriculumState.start(curriculum)
            self.trainer = None  # set once the trainer exists: checks log through trainer.log (all trackers)
            self.eval_seconds_this_run = 0.0

        def state(self) -> dict:  # ExportableState: stored in trainer_state.json at every checkpoint
            return {"args": {}, "attributes": {"curriculum": self.progress.to_json(), "sampler": sampler.state()}}

        def on_train_begin(self, args, state, control, **kwargs):
            saved = (state.stateful_callbacks or {}).get(type(self).__name__, {}).get("attributes")
            if saved and state.global_step > 0:  # resumed from a checkpoint: continue where it was
                self.progress = CurriculumState.from_json(saved["curriculum"])
                sampler.restore(saved["sampler"])
                log.info("curriculum resumed at step %d: stage %d", state.global_step, self.progress.stage)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if not due(self.progress, step):
                return
            measured = measure(model)
            self.eval_seconds_this_run += measured["eval_seconds"]
            before = self.progress.stage
            self.progress = decide(curriculum, self.progress, step, **measured)
            if self.progress.stage != before:
                sampler.set_weights(self.progress.weights)
            event = self.progress.events[-1]
            self.trainer.log(tracker_scalars(event, self.progress.stage))
            console(
                f"sft curriculum step {step}: {event['action']} ({event['reason']}), stage {event['stage']}, "
                f"val accuracy {event['performance']:.3f} ({measured['eval_seconds']:.1f}s)"
            )

    return CurriculumCallback()


def tracker_scalars(event: dict[str, Any], stage: int) -> dict[str, float]:
    """A check as scalars for the trackers (TensorBoard, W&B, ...): accuracy overall and per difficulty, the stage
    index, the mix, the check's cost, and 1 for an advance or a rollback."""
    scalars = {
        "curriculum/val_accuracy": event["performance"],
        "curriculum/stage": float(stage),
        "curriculum/eval_seconds": event["eval_seconds"],
        f"curriculum/{event['action']}": 1.0,
    }
    scalars.update({f"curriculum/val_accuracy_d{d}": v for d, v in event["by_difficulty"].items()})
    scalars.update({f"curriculum/weight_d{d}": w for d, w in event["weights"].items()})
    return scalars


def eval_subset(val: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """The fixed val items of every check: a seeded sample of `n` (in split order)."""
    return val.sample(n=n, random_state=seed).sort_index() if n < len(val) else val


def curriculum_report(curriculum: Curriculum, callback, sampler: DifficultySampler, trained: int, metrics) -> dict:
    """results/sft/curriculum.json: the figures the report shows, every check's event, the sampler's schedule."""
    train_seconds = metrics["train_seconds_this_run"]
    return {
        "enabled": True,
        "config": dataclasses.asdict(curriculum),
        **summary(curriculum, callback.progress),
        "samples_per_difficulty": sampler.seen_per_difficulty(trained),
        "eval_share_of_train_time": callback.eval_seconds_this_run / train_seconds if train_seconds else None,
        "events": callback.progress.events,
        "sampler": sampler.state(),
        "stage_spans": stage_spans(callback.progress.events, curriculum.stages[0]["name"], metrics["global_step"]),
    }


def train_sft(
    *,
    base_dir: str,
    train_path: str,
    val_path: str,
    tokens_path: str,
    out_dir: str,
    metrics_path: str,
    curve_path: str,
    curriculum_path: str,
    work_dir: str,
    tracking_dir: str,
    train: dict[str, Any],
    lora: dict[str, Any] | None,
    eval_rows: int,
    seed: int,
    curriculum: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    conversion_path: str | None = None,
) -> dict[str, Any]:
    """`curriculum`: sft.curriculum (None: uniform sampling); `evaluation`: how its checks decode and verify
    (task_options, max_new_tokens, batch_size); `conversion_path`: convert.json, whose tokenizer rendering the
    base model's must match (None: no check)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(base_dir)
    check_rendering(tokenizer, base_dir, conversion_path)
    model = load_model(base_dir)
    train_split, val_split = read_parquet(train_path), read_parquet(val_path)
    train_rows = train_split["token_row"].tolist()
    val_rows = val_split["token_row"].tolist()[:eval_rows]
    train_examples, val_examples = read_token_rows(tokens_path, train_rows, val_rows)
    settings = {"train": train, "lora": lora, "seed": seed, "eval_rows": eval_rows}
    if curriculum:
        settings.update(curriculum=curriculum, evaluation=evaluation)
    inputs = {"base model": base_dir, "train split": train_path, "val split": val_path, "tokens": tokens_path}
    ckpt = checkpoint_dir(work_dir, {**settings, "inputs": [file_digest(p) for p in inputs.values()]}, "sftdpo.sft")
    args = trainer_config(
        SFTConfig,
        "sft.train",
        train,
        ckpt,
        seed,
        evaluate=bool(val_rows),
        completion_only_loss=True,
        packing=False,
        include_num_input_tokens_seen="non_padding",
        dataset_kwargs={"skip_prepare_dataset": True},  # prepared here: `trainer_rows`
    )
    train_examples, kept = trainer_rows(train_examples, args.max_length, args.truncation_mode)
    val_examples, _ = trainer_rows(val_examples, args.max_length, args.truncation_mode)
    train_ds = Dataset.from_list(train_examples)
    val_ds = Dataset.from_list(val_examples) if val_rows else None
    if args.shuffle_dataset:  # the last step of TRL's preparation
        train_ds = train_ds.shuffle(seed=args.seed)
        val_ds = val_ds.shuffle(seed=args.seed) if val_ds is not None else None
    plan = Curriculum.from_config(curriculum) if curriculum else None
    sampler = callback = None
    if plan:
        difficulties = train_split["difficulty"].astype(str)
        plan.check_difficulties(sorted(difficulties.unique()))
        buckets = {d: rows.tolist() for d, rows in difficulties.groupby(difficulties).indices.items()}
        drawn = train["max_steps"] * train["batch_size"] * train["grad_accum"] * args.world_size
        sampler = DifficultySampler(buckets, plan.weights(0), seed=seed, num_samples=drawn)
        checks = eval_subset(val_split, plan.eval_items, seed)

        def measure(trained_model):
            return val_accuracy(trained_model, tokenizer, checks, evaluation, seed)

        callback = curriculum_callback(plan, sampler, measure)
    trainer = sft_trainer(SFTTrainer)(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=lora_config(lora) if lora else None,
        callbacks=[callback] if callback else None,
        sampler=sampler,
    )
    if callback:
        callback.trainer = trainer
        if len(kept) != len(train_rows):  # the sampler's indices are rows of the train split
            raise RuntimeError(f"SFT dropped train rows left without a label ({len(train_rows)} -> {len(kept)})")
    log.info("SFT: %d train rows, %d val rows, %s", len(train_ds), len(val_rows), "LoRA" if lora else "full")
    metrics = run_training(
        trainer, ckpt, out_dir, tokenizer, "sft", inputs=inputs, config=settings, tracking_dir=tracking_dir
    )
    metrics.update(n_train=len(train_ds), n_val=len(val_rows), lora=lora)
    evals = [h["eval_loss"] for h in metrics["log_history"] if "eval_loss" in h]
    metrics["final_eval_loss"] = evals[-1] if evals else None
    metrics.update(token_rates(trainer, metrics["train_seconds_this_run"]))
    report = {"enabled": False}
    if plan:
        trained = metrics["global_step"] * train["batch_size"] * train["grad_accum"] * args.world_size
        report = curriculum_report(plan, callback, sampler, trained, metrics)
        metrics["curriculum"] = {k: v for k, v in report.items() if k not in ("events", "sampler", "config")}
    marks = {"stages": report.get("stage_spans"), "events": report.get("events")}
    write_metrics(metrics, metrics_path, curve_path, ["loss", "eval_loss"], "SFT loss", **marks)
    write_json(report, curriculum_path)
    return metrics
