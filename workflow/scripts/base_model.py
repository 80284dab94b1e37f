"""Rule base_model: the base model and its tokenizer (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.base_model import build_base_model

sm = snakemake  # noqa: F821
p = sm.params
run(
    sm,
    lambda: build_base_model(
        name_or_path=p.name_or_path,
        out_dir=sm.output[0],
        scratch=p.scratch,
        task=p.task,
        task_options=p.task_options[p.task],
        tokenizer_files=p.tokenizer_files,
        trust_remote_code=p.trust_remote_code,
        seed=p.seed,
        revision=p.revision,
        chat_template=p.chat_template,
    ),
)
