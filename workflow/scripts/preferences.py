"""Rule preferences: preference pairs from scored rollouts (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.preferences import build_preferences

sm = snakemake  # noqa: F821
run(
    sm,
    lambda: build_preferences(
        rollouts_path=sm.input.rollouts,
        tokenizer_dir=sm.input.tokenizer,
        pairs_path=sm.output.pairs,
        report_path=sm.output.report,
        max_pairs_per_prompt=sm.params.max_pairs_per_prompt,
        quality_margin=sm.params.quality_margin,
    ),
)
