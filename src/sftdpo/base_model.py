"""The base model: a tiny model built from scratch with a tokenizer trained on task text, a Hugging Face Hub
model downloaded into the directory, or a reference to a local model directory (tokenizer saved beside it)."""

from __future__ import annotations

import importlib
from typing import Any

from sftdpo.modeling import make_base_model
from sftdpo.tasks import Task, get_task


def tokenizer_texts(task: Task, *, n: int, seed: int, tokenizer_files: dict[str, Any] | None) -> list[str]:
    """Text the scratch tokenizer learns from: the first `n` imported rows (prompt and demonstration)
    when the demonstrations come from files, else `n` of the task's problems with their solutions."""
    if tokenizer_files:
        # Imported by name, so the base model's code fingerprint covers the importer only when it is used.
        importers = importlib.import_module("sftdpo.importers")
        # Bad rows are the collect rule's to report.
        files = importers.FilesExpert(task, max_bad_fraction=1.0, limit=n, **tokenizer_files)
        return [f"{p.prompt}\n{files.demonstrate(p)[0]}" for p in files.shard_problems(0, 1)]
    # Another seed than the demonstrations': the tokenizer does not see exactly the training problems.
    problems = task.problems(n if task.can_make(n) else task.max_problems(), seed + 1)
    return [f"{p.prompt}\n{task.solve(p)}" for p in problems]


def build_base_model(
    *,
    name_or_path: str,
    out_dir: str,
    scratch: dict[str, Any],
    task: str,
    task_options: dict[str, Any],
    tokenizer_files: dict[str, Any] | None,
    trust_remote_code: bool,
    seed: int,
    revision: str,
    chat_template: str | None,
) -> dict[str, Any]:
    """Write the base model directory (see sftdpo.modeling.make_base_model); returns its info."""
    texts = None
    if name_or_path == "scratch":
        texts = tokenizer_texts(
            get_task(task, **task_options), n=scratch["tokenizer_texts"], seed=seed, tokenizer_files=tokenizer_files
        )
    return make_base_model(
        name_or_path=name_or_path,
        out_dir=out_dir,
        scratch=scratch,
        tokenizer_texts=texts,
        trust_remote_code=trust_remote_code,
        seed=seed,
        revision=revision,
        chat_template=chat_template,
    )
