"""Expert collection, one shard at a time, resumable inside a shard.

Every answer the expert gives is appended to the shard's progress file (outside the declared outputs)
as it arrives; a rerun skips the problems already answered and keeps the rows written before a kill.
At the end the shard's rows are rebuilt from the current problems (so a changed prompt is asked again
rather than reused) and re-verified by the task; with an expert's `keep_failures: false` the rows the
verifier rejects are counted in the summary but not written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sftdpo.bulk import gc_paused
from sftdpo.experts import EXPERT_MODULES, get_expert
from sftdpo.fingerprint import code_fingerprint
from sftdpo.io import ShardProgress, atomic_path, params_hash, resume_dir, write_json, write_parquet
from sftdpo.progress import Progress
from sftdpo.tables import DEMO_COLUMNS
from sftdpo.tasks import Problem, get_task

log = logging.getLogger(__name__)
# json.dumps(value, sort_keys=True, default=str), one encoder for every row
META_JSON = json.JSONEncoder(sort_keys=True, default=str)

# Options that change how a teacher's answers are fetched, not which answers (see progress_key).
TEACHER_TRANSPORT = (
    "workers",
    "rate_limit",
    "timeout",
    "max_retries",
    "backoff_base",
    "backoff_max",
    "keep_failures",
    "api_key_env",
)


def input_signature(paths: list[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file under the given local paths; missing paths (hub ids) are skipped."""
    out = []
    for path in paths:
        root = Path(path)
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root] if root.is_file() else []
        for f in files:
            stat = f.stat()
            out.append((str(f.resolve()), stat.st_size, stat.st_mtime_ns))
    return out


def progress_key(params: dict[str, Any]) -> str:
    """Directory key of a shard's progress (see `progress_params`)."""
    return params_hash(progress_params(params))


def progress_params(params: dict[str, Any]) -> dict[str, Any]:
    """What decides a shard's answers, hashed into the directory key of its progress.

    That is the shard's arguments and the code of collect and its expert (`code`), plus the signature
    (size, mtime) of the data they read: the task's file, imported files, a local policy model, so new
    data is never answered from stale progress.
    For a teacher, whose answers cost money, the code fingerprint, the transport options and the data
    signature are left out, so an edit of the library or the data file, or a new rate limit, reuses
    the answers already bought: rows are rebuilt and re-verified at the end, and a problem whose
    prompt (or model, endpoint, sampling, system prompt) changed is asked again.
    """
    params = dict(params)
    options = dict(params.get("expert_options") or {})
    if params.get("expert") == "teacher":
        params.pop("code", None)
        params["expert_options"] = {k: v for k, v in options.items() if k not in TEACHER_TRANSPORT}
        return params
    task_options = params.get("task_options") or {}
    paths = [task_options.get("path"), *(options.get("paths") or []), options.get("model")]
    params["inputs"] = input_signature([p for p in paths if isinstance(p, str) and p])
    return params


def _key(problem_id: str, prompt: str, token: str = "") -> str:
    """Progress key of an answer: the problem, its prompt and what the expert asks with (`cache_token`)."""
    return f"{problem_id}:{hashlib.sha256(f'{token}|{prompt}'.encode()).hexdigest()[:12]}"


PROBLEM_TEXT = ["id", "prompt", "answer", "difficulty", "meta"]  # and `shard`, the collect shard that asks it
PROBLEMS_SCHEMA = pa.schema([*(pa.field(name, pa.string()) for name in PROBLEM_TEXT), pa.field("shard", pa.int32())])


@gc_paused()  # a Problem a row, up to millions (sftdpo.bulk)
def write_problems(
    *, task: str, task_options: dict[str, Any], n_problems: int, seed: int, n_shards: int, out_path: str
) -> dict[str, Any]:
    """The task's `problems(n_problems, seed)`, made once for every collect shard, to parquet: a row a problem (its
    meta as JSON text) with the shard that asks it (`shard`: its position modulo `n_shards`), one row group a
    shard, so a shard reads its own rows only (`read_problems`). Returns the number of problems and of shards."""
    problems = get_task(task, **task_options).problems(n_problems, seed)
    with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, PROBLEMS_SCHEMA) as writer:
        for shard in range(n_shards):
            mine = problems[shard::n_shards]
            writer.write_table(pa.table({
                "id": [p.id for p in mine], "prompt": [p.prompt for p in mine], "answer": [p.answer for p in mine],
                "difficulty": [p.difficulty for p in mine], "meta": [META_JSON.encode(p.meta) for p in mine],
                "shard": pa.array([shard] * len(mine), pa.int32()),
            }, schema=PROBLEMS_SCHEMA))  # fmt: skip
    log.info("problems: %d of task %s for %d shards (%s)", len(problems), task, n_shards, out_path)
    return {"n_problems": len(problems), "n_shards": n_shards}


@gc_paused()
def read_problems(path: str, shard: int) -> tuple[list[Problem], list[str]]:
    """The problems `write_problems` gave to `shard`, in the task's order, and their metas as the file holds them
    (`META_JSON` text: the demo rows take it as it is, not encoded again)."""
    table = pq.read_table(path, columns=PROBLEM_TEXT, filters=[("shard", "=", shard)])
    ids, prompts, answers, difficulties, meta_texts = (table.column(name).to_pylist() for name in PROBLEM_TEXT)
    metas = json.loads(f"[{','.join(meta_texts)}]")  # one parse of all: a json.loads a row cost more than its parsing
    return [Problem(*fields) for fields in zip(ids, prompts, answers, difficulties, metas)], meta_texts


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
    work_dir: str,
    out_path: str,
    flush_every: int,
    summary_path: str | None = None,
    flush_seconds: float = 5.0,
    problems_path: str | None = None,
) -> pd.DataFrame:
    """Write the demonstrations of this shard's problems to `out_path` (and a summary to `summary_path`).

    The shard's problems are the task's `problems(n_problems, seed)[shard::n_shards]`: read from `problems_path`
    (`write_problems`: made once for all shards) or made here; or, for an expert that brings its own (`files`),
    its rows whose number is `shard` modulo `n_shards`. Answers are
    recorded as they arrive in `<work_dir>/<progress key>/<shard>.jsonl`, so a rerun resumes.
    """
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} out of range for collect.shards={n_shards}")
    started = time.time()
    progress_path = (
        resume_dir(
            work_dir,
            progress_params(
                {
                    "task": task,
                    "task_options": task_options,
                    "n_problems": n_problems,
                    "expert": expert,
                    "expert_options": expert_options,
                    "n_shards": n_shards,
                    "seed": seed,
                    "code": code_fingerprint("sftdpo.collect", *EXPERT_MODULES.get(expert, ())),
                }
            ),
        )
        / f"{shard}.jsonl"
    )
    task_obj = get_task(task, **task_options)
    expert_obj = get_expert(expert, task_obj, seed=seed, **expert_options)
    problems = expert_obj.shard_problems(shard, n_shards)
    meta_texts = None
    if problems is None and problems_path:
        problems, meta_texts = read_problems(problems_path, shard)
    elif problems is None:
        problems = task_obj.problems(n_problems, seed)[shard::n_shards]
    if meta_texts is None:
        meta_texts = [META_JSON.encode(problem.meta) for problem in problems]
    progress = ShardProgress(progress_path, key="key")
    keys = {p.id: _key(p.id, p.prompt, expert_obj.cache_token) for p in problems}
    todo = [p for p in problems if keys[p.id] not in progress.done]
    resumed = len(problems) - len(todo)
    log.info("shard %d/%d: %d problems, %d already done (%s)", shard, n_shards, len(problems), resumed, progress_path)
    console = Progress(f"collect shard {shard}", len(problems), unit="demos", resumed=resumed)
    batch: list[dict] = []
    last_flush = time.monotonic()
    try:
        answers = expert_obj.run(todo)
        for problem, completion, meta in tqdm(
            answers, total=len(todo), desc=f"collect shard {shard}", unit="demo", mininterval=2
        ):
            batch.append(
                {
                    "key": keys[problem.id],
                    "id": problem.id,
                    "prompt": problem.prompt,
                    "completion": completion,
                    "meta": META_JSON.encode(meta),
                }
            )
            console.update()
            if len(batch) >= flush_every or time.monotonic() - last_flush >= flush_seconds:
                progress.append(batch)
                batch, last_flush = [], time.monotonic()
    finally:
        progress.append(batch)
        progress.close()
    console.close()

    rows, failures, by_difficulty = shard_rows(problems, meta_texts, keys, progress.rows, task_obj, expert_obj.name)
    keep_failures = expert_obj.keep_failures
    written = rows if keep_failures else [r for r in rows if r["correct"]]
    frame = pd.DataFrame(written, columns=DEMO_COLUMNS)
    write_parquet(frame, out_path)
    summary = {
        "shard": shard,
        "n_shards": n_shards,
        "task": task_obj.name,
        "expert": expert_obj.name,
        "n_problems": len(problems),
        "resumed": resumed,
        "n_correct": sum(r["correct"] for r in rows),
        "n_incorrect": len(rows) - sum(r["correct"] for r in rows),
        "incorrect_by_reason": dict(sorted(failures.items())),
        "keep_failures": keep_failures,
        "n_written": len(written),
        "n_dropped_incorrect": len(rows) - len(written),
        "dropped_ids": [] if keep_failures else sorted(r["id"] for r in rows if not r["correct"]),
        "success_by_difficulty": {
            level: {"n": c["n"], "correct": c["correct"], "rate": c["correct"] / c["n"]}
            for level, c in sorted(by_difficulty.items())
        },
        "seconds_this_run": round(time.time() - started, 3),
    }
    summary.update(expert_obj.summary(rows))
    log.info("shard %d summary: %s", shard, json.dumps(summary, sort_keys=True, default=str)[:4000])
    if summary_path:
        write_json(summary, summary_path)
    return frame


@gc_paused()  # a row a problem, up to millions (sftdpo.bulk)
def shard_rows(problems, meta_texts: list[str], keys: dict[str, str], answers: list[dict], task_obj, expert: str):
    """The shard's demo rows from its problems (and their metas as `META_JSON` text) and the answers in its
    progress, each re-verified; with the verifier's failures by reason and the success counts by difficulty."""
    answered = {row["key"]: row for row in answers}
    rows, failures = [], Counter()
    by_difficulty: dict[str, Counter] = defaultdict(Counter)
    for problem, meta_text in zip(problems, meta_texts):
        done = answered[keys[problem.id]]
        verdict = task_obj.verify(done["completion"], problem.answer)
        by_difficulty[problem.difficulty]["n"] += 1
        by_difficulty[problem.difficulty]["correct"] += verdict.correct
        if not verdict.correct:
            failures[verdict.reason] += 1
        rows.append(
            {
                "id": problem.id,
                "task": task_obj.name,
                "difficulty": problem.difficulty,
                "prompt": problem.prompt,
                "completion": done["completion"],
                "answer": problem.answer,
                "expert": expert,
                "correct": verdict.correct,
                "meta": row_meta(done["meta"], meta_text),
            }
        )
    return rows, failures, by_difficulty


PROBLEM_SLOT = "\x00problem\x00"  # no expert writes this value: it marks where a row's problem meta goes


def row_meta(expert_meta: str, problem_meta: str) -> str:
    """A demo row's meta: the expert's meta with the problem's meta under `problem` (both as `META_JSON` text), as
    `json.dumps({**json.loads(expert_meta), "problem": json.loads(problem_meta)}, sort_keys=True, default=str)`."""
    before, after = _meta_around_problem(expert_meta)
    return before + problem_meta + after


@functools.lru_cache(maxsize=4096)
def _meta_around_problem(expert_meta: str) -> tuple[str, str]:
    """The row meta's text before and after its problem's meta. A program expert gives a handful of distinct metas,
    so a row costs a lookup and a join instead of a parse and an encode of the whole (a third of a 1M-row collect)."""
    text = META_JSON.encode({**json.loads(expert_meta), "problem": PROBLEM_SLOT})
    before, _, after = text.partition(META_JSON.encode(PROBLEM_SLOT))
    return before, after
