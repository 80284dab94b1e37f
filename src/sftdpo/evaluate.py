"""Greedy evaluation of one stage's model on the test split, one row per item."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from sftdpo.generation import greedy_verdicts, load_for_inference
from sftdpo.io import read_parquet, write_parquet
from sftdpo.modeling import check_rendering
from sftdpo.progress import Progress
from sftdpo.tables import EVAL_COLUMNS

log = logging.getLogger(__name__)


def evaluate(
    *,
    stage: str,
    model_dir: str,
    items_path: str,
    out_path: str,
    task_options: dict[str, dict[str, Any]],
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    kv_cache_mb: float = 2048,
    conversion_path: str | None = None,
) -> pd.DataFrame:
    """`batch_size` and `kv_cache_mb` bound each generate call (sftdpo.generation.greedy_batch_size).
    `conversion_path`: convert.json, whose tokenizer rendering the model's must match (None: no check)."""
    test = read_parquet(items_path)
    model, tokenizer = load_for_inference(model_dir)
    check_rendering(tokenizer, model_dir, conversion_path)
    progress = Progress(f"evaluate {stage}", len(test), unit="items")
    rows = greedy_verdicts(
        model, tokenizer, test, task_options=task_options, max_new_tokens=max_new_tokens, batch_size=batch_size,
        kv_cache_mb=kv_cache_mb, seed=seed, desc=f"evaluate {stage}", progress=progress,
    )  # fmt: skip
    progress.close()
    rows = [{**row, "stage": stage} for row in rows]
    frame = pd.DataFrame(rows, columns=EVAL_COLUMNS)
    log.info("%s: accuracy %.3f on %d items", stage, frame["correct"].mean(), len(frame))
    write_parquet(frame, out_path)
    return frame
