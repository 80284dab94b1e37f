"""DPO with TRL's DPOTrainer, starting from the SFT model; the reference is the SFT model, unmerged.

- SFT wrote a LoRA adapter: the adapter is loaded trainable and TRL keeps a frozen copy of it as the
  reference adapter ("ref").
- SFT wrote a full model (the scratch default): a new LoRA adapter is trained on top of it
  (`dpo.lora`), so the reference is the same model with adapters disabled. With `dpo.lora: null`
  the whole model is trained against a frozen copy.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from sftdpo.io import file_digest, read_parquet
from sftdpo.modeling import load_model, load_tokenizer
from sftdpo.training import checkpoint_dir, lora_config, run_training, trainer_kwargs, write_metrics

log = logging.getLogger(__name__)


def train_dpo(
    *,
    sft_dir: str,
    pairs_path: str,
    out_dir: str,
    metrics_path: str,
    curve_path: str,
    work_dir: str,
    train: dict[str, Any],
    beta: float,
    loss_type: list[str],
    lora: dict[str, Any] | None,
    seed: int,
) -> dict[str, Any]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = load_tokenizer(sft_dir)
    model = load_model(sft_dir, trainable_adapter=True)
    pairs = read_parquet(pairs_path)
    dataset = Dataset.from_dict({c: [list(v) for v in pairs[c]] for c in ("prompt", "chosen", "rejected")})
    ckpt = checkpoint_dir(
        work_dir,
        {
            "train": train,
            "beta": beta,
            "loss_type": loss_type,
            "lora": lora,
            "seed": seed,
            "inputs": [file_digest(p) for p in (sft_dir, pairs_path)],
        },
        "sftdpo.dpo",
    )
    args = DPOConfig(**trainer_kwargs(train, ckpt, seed), beta=beta, loss_type=loss_type)
    is_adapter = hasattr(model, "peft_config")
    kwargs: dict[str, Any] = {}
    if not is_adapter and lora:
        kwargs["peft_config"] = lora_config(lora)
    elif not is_adapter:
        kwargs["ref_model"] = copy.deepcopy(model).eval()
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, **kwargs)
    log.info(
        "DPO: %d pairs, reference = %s",
        len(dataset),
        "SFT adapter copy" if is_adapter else "SFT model, adapters disabled" if lora else "frozen SFT copy",
    )
    metrics = run_training(trainer, ckpt, out_dir, tokenizer)
    metrics.update(n_pairs=len(dataset), beta=beta, loss_type=loss_type)
    history = metrics["log_history"]
    for key in ("rewards/accuracies", "rewards/margins", "loss"):
        values = [h[key] for h in history if key in h]
        metrics[f"final_{key.replace('/', '_')}"] = values[-1] if values else None
    write_metrics(metrics, metrics_path, curve_path, ["loss", "rewards/accuracies", "rewards/margins"], "DPO")
    return metrics
