"""Rule convert: the convert shards in one chat table and token tensor, gates on the totals (adapter: reads
`snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.convert import merge_shards

sm = snakemake  # noqa: F821
shard_files = zip(sm.input.chat, sm.input.tokens, sm.input.summaries)
run(
    sm,
    lambda: merge_shards(
        validated_path=sm.input.validated,
        shards=[{"chat": c, "tokens": t, "summary": s} for c, t, s in shard_files],
        chat_path=sm.output.chat,
        tokens_path=sm.output.tokens,
        report_path=sm.output.report,
        max_length=sm.params.max_length,
        gates=sm.params.gates,
        system_prompt=sm.params.system_prompt,
    ),
)
