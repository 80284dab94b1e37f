"""Rule validate_shard: the checks of one demo shard that need only its rows.

Adapter: reads `snakemake`, calls the library.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.validate import check_shard

# Only as the job's own script: the verifier processes (spawn) import this file again as __mp_main__, without the
# `snakemake` object.
if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    run(
        sm,
        lambda: check_shard(
            shard_path=sm.input[0],
            checks_path=sm.output[0],
            task_options=sm.params.task_options,
            max_prompt_chars=sm.params.max_prompt_chars,
            max_completion_chars=sm.params.max_completion_chars,
            workers=sm.threads,
        ),
    )
