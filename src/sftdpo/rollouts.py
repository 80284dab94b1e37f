"""Rollouts: k sampled completions per prompt from the SFT model, scored by the verifier.

The prompts are `n_prompts` of the train split (DPO trains on their pairs) and `n_val_prompts` of the
val split (their pairs are DPO's held-out evaluation set); each row says its `split`.

Prompts are sharded; each shard records rows as it goes (resumable) and writes its parquet at the end.
Score = correctness + a small format bonus - a length penalty, so preference building can rank
correct samples by quality.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pandas as pd

from sftdpo.chat import with_user_text
from sftdpo.generation import generate, generate_vllm, load_for_inference, vllm_available
from sftdpo.fingerprint import code_fingerprint
from sftdpo.io import ShardProgress, file_digest, model_digest, read_parquet, resume_dir, write_parquet
from sftdpo.modeling import check_rendering, load_tokenizer
from sftdpo.progress import Progress
from sftdpo.tables import ROLLOUT_COLUMNS
from sftdpo.tasks import get_task

log = logging.getLogger(__name__)


def score(correct: bool, reason: str | None, n_tokens: int, max_new_tokens: int) -> float:
    well_formed = reason not in ("no_answer_line", "malformed_step")
    return round(float(correct) + 0.1 * well_formed - 0.1 * n_tokens / max_new_tokens, 6)


def select_prompts(train: pd.DataFrame, n_prompts: int, seed: int) -> pd.DataFrame:
    """A seeded subset of the train split (all of it when n_prompts >= its size), in a stable order."""
    order = sorted(train.index, key=lambda i: hashlib.sha256(f"{seed}:{train.at[i, 'id']}".encode()).hexdigest())
    return train.loc[order[:n_prompts]].reset_index(drop=True)


def rollout_shard(
    *,
    model_dir: str,
    train_path: str,
    val_path: str,
    out_path: str,
    work_dir: str,
    shard: int,
    n_shards: int,
    n_prompts: int,
    n_val_prompts: int,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
    variants: list[str],
    backend: str,
    task_options: dict[str, dict[str, Any]],
    seed: int,
    conversion_path: str | None = None,
) -> pd.DataFrame:
    """Write shard `shard` of `n_shards` of the rollouts to `out_path`; `conversion_path`: convert.json, whose
    tokenizer rendering the model's must match (None: no check).

    Samples are recorded batch by batch in `<work_dir>/<hash of arguments, inputs, code>/<shard>.jsonl`;
    each batch is seeded by its position, so a resumed shard equals an uninterrupted one.
    """
    progress_path = (
        resume_dir(
            work_dir,
            {
                "n_shards": n_shards,
                "n_prompts": n_prompts,
                "n_val_prompts": n_val_prompts,
                "k": k,
                "temperature": temperature,
                "top_p": top_p,
                "max_new_tokens": max_new_tokens,
                "batch_size": batch_size,
                "variants": variants,
                "backend": backend,
                "task_options": task_options,
                "seed": seed,
                "code": code_fingerprint("sftdpo.rollouts"),
                "inputs": [file_digest(model_dir), file_digest(train_path), file_digest(val_path)],
            },
        )
        / f"{shard}.jsonl"
    )
    prompts = pd.concat(
        [
            select_prompts(read_parquet(train_path), n_prompts, seed).assign(split="train"),
            select_prompts(read_parquet(val_path), n_val_prompts, seed).assign(split="val"),
        ],
        ignore_index=True,
    ).iloc[shard::n_shards]
    # A variant rewrites the final user message; the messages before it (system, earlier turns) stay.
    items = [
        (row, v, template.format(prompt=row.prompt[-1]["content"]))
        for row in prompts.itertuples(index=False)
        for v, template in enumerate(variants or ["{prompt}"])
    ]
    tasks = {name: get_task(name, **task_options.get(name, {})) for name in prompts["task"].unique()}
    progress = ShardProgress(progress_path)

    def done(item) -> bool:
        return all(f"{item[0].id}:{item[1]}:{j}" in progress.done for j in range(k))

    todo = [it for it in items if not done(it)]
    log.info("rollouts shard %d/%d: %d prompt variants, %d to do, k=%d", shard, n_shards, len(items), len(todo), k)
    console = Progress(f"rollouts shard {shard}", len(items), unit="prompts", resumed=len(items) - len(todo))
    if conversion_path:  # vLLM loads its own tokenizer from the same directory
        check_rendering(load_tokenizer(model_dir), model_dir, conversion_path)
    use_vllm = backend == "vllm" or (backend == "auto" and vllm_available())
    sampled_by = model_digest(model_dir) if todo else None  # a finished shard samples nothing: no weights to hash
    model = tokenizer = None
    if todo and not use_vllm:
        model, tokenizer = load_for_inference(model_dir)
    # Work in fixed chunks of the full item list so reseeding per chunk reproduces an uninterrupted run.
    for start in range(0, len(items), batch_size):
        chunk = [it for it in items[start : start + batch_size] if not done(it)]
        if not chunk:
            continue
        texts = [with_user_text(row.prompt, text) for row, _, text in chunk]
        chunk_seed = seed * 7919 + shard * 104729 + start
        if use_vllm:
            outputs = generate_vllm(
                model_dir,
                texts,
                k=k,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                seed=chunk_seed,
            )
        else:
            outputs = generate(
                model,
                tokenizer,
                texts,
                k=k,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                batch_size=len(texts),
                seed=chunk_seed,
                desc=f"rollouts shard {shard} [{start}/{len(items)}]",
            )
        rows = []
        for (row, variant, text), samples in zip(chunk, outputs):
            for j, sample in enumerate(samples):
                verdict = tasks[row.task].verify(sample["text"], row.answer)
                rows.append(
                    {
                        "id": f"{row.id}:{variant}:{j}",
                        "prompt_id": row.id,
                        "split": row.split,
                        "variant": variant,
                        "sample": j,
                        "task": row.task,
                        "difficulty": row.difficulty,
                        "prompt": text,
                        "context": [dict(m) for m in row.prompt[:-1]],
                        "completion": sample["text"],
                        "answer": row.answer,
                        "prediction": verdict.prediction,
                        "correct": verdict.correct,
                        "reason": verdict.reason,
                        "n_tokens": sample["n_tokens"],
                        "score": score(verdict.correct, verdict.reason, sample["n_tokens"], max_new_tokens),
                        "model": model_dir,
                        "model_digest": sampled_by,
                        "seed": chunk_seed,
                        "temperature": temperature,
                        "top_p": top_p,
                        "max_new_tokens": max_new_tokens,
                    }
                )
        progress.append(rows)
        console.update(len(chunk))
    progress.close()
    console.close()
    order = {f"{row.id}:{v}": i for i, (row, v, _) in enumerate(items)}
    done = [r for r in progress.rows if f"{r['prompt_id']}:{r['variant']}" in order]
    done.sort(key=lambda r: (order[f"{r['prompt_id']}:{r['variant']}"], r["sample"]))
    frame = pd.DataFrame(done, columns=ROLLOUT_COLUMNS)
    write_parquet(frame, out_path)
    return frame
