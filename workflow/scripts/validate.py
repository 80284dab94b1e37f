"""Rule validate: re-check demonstrations, reject with reasons, quality gates.

Adapter: reads `snakemake`, calls the library.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run
from sftdpo.validate import validate

# Only as the job's own script: validate's verifier processes (spawn) import this file again as __mp_main__,
# without the `snakemake` object.
if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    o, p = sm.output, sm.params
    run(
        sm,
        lambda: validate(
            demos_path=sm.input.demos,
            validated_path=o.validated,
            rejected_path=o.rejected,
            report_path=o.report,
            plot_paths={"difficulty": o.difficulty, "lengths": o.lengths, "rejections": o.rejections},
            task_options=p.task_options,
            max_prompt_chars=p.max_prompt_chars,
            max_completion_chars=p.max_completion_chars,
            gates=p.gates,
            import_summaries=list(sm.input.summaries),
            workers=sm.threads,
        ),
    )
