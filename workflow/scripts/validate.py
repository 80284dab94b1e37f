"""Rule validate: the demo shards' checks and the checks across rows; rejects with reasons, quality gates.

Adapter: reads `snakemake`, calls the library.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.validate import validate

sm = snakemake  # noqa: F821
o = sm.output
run(
    sm,
    lambda: validate(
        demos_path=sm.input.demos,
        checks_paths=list(sm.input.checks),
        validated_path=o.validated,
        rejected_path=o.rejected,
        report_path=o.report,
        plot_paths={"difficulty": o.difficulty, "lengths": o.lengths, "rejections": o.rejections},
        gates=sm.params.gates,
        import_summaries=list(sm.input.summaries),
    ),
)
