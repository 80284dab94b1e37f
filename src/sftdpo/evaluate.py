"""Greedy evaluation of one stage's model on the test split, one row per item."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from sftdpo.generation import generate, load_for_inference
from sftdpo.io import read_parquet, write_parquet
from sftdpo.progress import Progress
from sftdpo.tables import EVAL_COLUMNS
from sftdpo.tasks import get_task

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
) -> pd.DataFrame:
    test = read_parquet(items_path)
    model, tokenizer = load_for_inference(model_dir)
    # The chat rows' prompt messages as SFT saw them (system message and earlier turns included).
    prompts = [list(messages) for messages in test["prompt"]]
    progress = Progress(f"evaluate {stage}", len(prompts), unit="items")
    outputs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        desc=f"evaluate {stage}",
        progress=progress,
    )
    progress.close()
    rows = []
    tasks = {name: get_task(name, **task_options.get(name, {})) for name in test["task"].unique()}
    for item, (sample,) in zip(test.itertuples(index=False), outputs):
        verdict = tasks[item.task].verify(sample["text"], item.answer)
        rows.append(
            {
                "id": item.id,
                "stage": stage,
                "task": item.task,
                "difficulty": item.difficulty,
                "completion": sample["text"],
                "prediction": verdict.prediction,
                "gold": item.answer,
                "correct": verdict.correct,
                "n_tokens": sample["n_tokens"],
            }
        )
    frame = pd.DataFrame(rows, columns=EVAL_COLUMNS)
    log.info("%s: accuracy %.3f on %d items", stage, frame["correct"].mean(), len(frame))
    write_parquet(frame, out_path)
    return frame
