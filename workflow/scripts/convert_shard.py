"""Rule convert_shard: one shard of chat rows and token tensor (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.convert import convert_shard, worker_processes

# Only as the job's own script: convert's worker processes (spawn) import this file again as __mp_main__,
# without the `snakemake` object.
if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    run(
        sm,
        lambda: convert_shard(
            validated_path=sm.input.validated,
            model_dir=sm.input.model,
            shard=int(sm.wildcards.shard),
            n_shards=sm.params.n_shards,
            chat_path=sm.output.chat,
            tokens_path=sm.output.tokens,
            summary_path=sm.output.summary,
            max_length=sm.params.max_length,
            system_prompt=sm.params.system_prompt,
            workers=worker_processes(sm.threads),
        ),
    )
