"""Rules evaluate / evaluate_val: greedy evaluation of one stage on the test / val split.

(adapter: reads `snakemake`, calls the library)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.evaluate import evaluate

sm = snakemake  # noqa: F821
p = sm.params
run(
    sm,
    lambda: evaluate(
        stage=sm.wildcards.stage,
        model_dir=sm.input.model,
        items_path=sm.input.split,
        out_path=sm.output[0],
        task_options=p.task_options,
        max_new_tokens=p.max_new_tokens,
        batch_size=p.batch_size,
        kv_cache_mb=p.kv_cache_mb,
        seed=p.seed,
        conversion_path=sm.input.conversion,
    ),
)
