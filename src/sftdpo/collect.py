"""Expert collection, one shard at a time, resumable inside a shard."""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
from tqdm import tqdm

from sftdpo.experts import get_expert
from sftdpo.io import ShardProgress, write_parquet
from sftdpo.tasks import get_task

log = logging.getLogger(__name__)

DEMO_COLUMNS = ["id", "task", "difficulty", "prompt", "completion", "answer", "expert", "correct", "meta"]


def collect_shard(
    *,
    task: str,
    task_options: dict[str, Any],
    n_problems: int,
    expert: str,
    expert_options: dict[str, Any],
    seed: int,
    shard: int,
    n_shards: int,
    progress_path: str,
    out_path: str,
    flush_every: int = 50,
) -> pd.DataFrame:
    """Write the demonstrations of problems `shard, shard + n_shards, ...` to `out_path`."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} out of range for collect.shards={n_shards}")
    task_obj = get_task(task, **task_options)
    expert_obj = get_expert(expert, task_obj, seed=seed, **expert_options)
    problems = task_obj.problems(n_problems, seed)[shard::n_shards]
    progress = ShardProgress(progress_path)
    todo = [p for p in problems if p.id not in progress.done]
    log.info("shard %d/%d: %d problems, %d already done", shard, n_shards, len(problems), len(problems) - len(todo))
    batch: list[dict] = []
    for problem in tqdm(todo, desc=f"collect shard {shard}", unit="demo", mininterval=2):
        completion, meta = expert_obj.demonstrate(problem)
        verdict = task_obj.verify(completion, problem.answer)
        batch.append(
            {
                "id": problem.id,
                "task": task_obj.name,
                "difficulty": problem.difficulty,
                "prompt": problem.prompt,
                "completion": completion,
                "answer": problem.answer,
                "expert": expert_obj.name,
                "correct": verdict.correct,
                "meta": json.dumps({**meta, "problem": problem.meta}, sort_keys=True),
            }
        )
        if len(batch) >= flush_every:
            progress.append(batch)
            batch = []
    progress.append(batch)
    progress.close()
    order = {p.id: i for i, p in enumerate(problems)}
    rows = sorted((r for r in progress.rows if r["id"] in order), key=lambda r: order[r["id"]])
    frame = pd.DataFrame(rows, columns=DEMO_COLUMNS)
    write_parquet(frame, out_path)
    return frame
