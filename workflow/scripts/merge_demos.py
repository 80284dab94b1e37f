"""Rule merge_demos: concatenate the demonstration shards (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.io import concat_parquet

sm = snakemake  # noqa: F821
run(sm, lambda: concat_parquet(list(sm.input), sm.output[0], sort_by="id"))
