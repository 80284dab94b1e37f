"""Rule base_model: the base model and its tokenizer (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run  # noqa: E402
from sftdpo.modeling import make_base_model  # noqa: E402
from sftdpo.tasks import get_task  # noqa: E402

sm = snakemake  # noqa: F821
p = sm.params


def stage():
    texts = None
    if p.name_or_path == "scratch":
        task = get_task(p.task, **p.task_options[p.task])
        # The tokenizer learns from task text, not from the demonstrations: no data leaks into it.
        problems = task.problems(p.scratch["tokenizer_texts"], p.seed + 1)
        texts = [f"{pr.prompt}\n{task.solve(pr)}" for pr in problems]
    return make_base_model(
        name_or_path=p.name_or_path,
        out_dir=sm.output[0],
        scratch=p.scratch,
        tokenizer_texts=texts,
        trust_remote_code=p.trust_remote_code,
        seed=p.seed,
    )


run(sm, stage)
