"""Rule base_model: the base model and its tokenizer (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run  # noqa: E402
from sftdpo.modeling import make_base_model  # noqa: E402
from sftdpo.tasks import get_task  # noqa: E402

sm = snakemake  # noqa: F821
p = sm.params


def tokenizer_texts(task):
    """Text the scratch tokenizer learns from: the task's problems and solutions, or the imported rows."""
    n = p.scratch["tokenizer_texts"]
    if p.tokenizer_files:
        from sftdpo.importers import FilesExpert

        # The first rows of the import (prompt and demonstration); bad rows are the collect rule's to report.
        files = FilesExpert(task, max_bad_fraction=1.0, limit=n, **p.tokenizer_files)
        problems = files.shard_problems(0, 1)
        return [f"{pr.prompt}\n{files.demonstrate(pr)[0]}" for pr in problems]
    # The tokenizer learns from task text drawn with another seed than the demonstrations.
    if hasattr(task, "rows"):  # a task read from a file (gsm8k) has as many problems as rows
        n = min(n, len(task.rows()))
    problems = task.problems(n, p.seed + 1)
    return [f"{pr.prompt}\n{task.solve(pr)}" for pr in problems]


def stage():
    texts = None
    if p.name_or_path == "scratch":
        texts = tokenizer_texts(get_task(p.task, **p.task_options[p.task]))
    return make_base_model(
        name_or_path=p.name_or_path,
        out_dir=sm.output[0],
        scratch=p.scratch,
        tokenizer_texts=texts,
        trust_remote_code=p.trust_remote_code,
        seed=p.seed,
    )


run(sm, stage)
