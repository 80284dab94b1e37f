"""Rule split: stratified train/val/test split (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.split import split

sm = snakemake  # noqa: F821
o = sm.output
run(
    sm,
    lambda: split(
        chat_path=sm.input[0],
        out_paths={"train": o.train, "val": o.val, "test": o.test},
        report_path=o.report,
        strata=sm.params.strata,
        fractions=sm.params.fractions,
        seed=sm.params.seed,
    ),
)
