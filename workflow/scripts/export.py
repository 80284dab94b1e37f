"""Rule export: one stage's model as a standalone directory (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.export import export_model

sm = snakemake  # noqa: F821
run(
    sm,
    lambda: export_model(
        stage=sm.wildcards.stage,
        model_dir=sm.input.model,
        out_dir=sm.output[0],
        summary_path=sm.input.summary,
        config=sm.params.config,
    ),
)
