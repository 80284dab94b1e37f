"""Rule dpo: DPO from the SFT model (reference = SFT, no merge) (adapter: reads `snakemake`, calls the library).

With resources.gpu > 1 (and that many GPUs visible) training runs under `accelerate launch`
(sftdpo.launch: DeepSpeed ZeRO-2 by default, `dpo.launch`); otherwise in-process.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.launch import run_stage
from sftdpo.dpo import train_dpo

sm = snakemake  # noqa: F821
i, o, p = sm.input, sm.output, sm.params
settings = p.settings  # the main run's dpo settings, or a variant's (dpo.variants)
kwargs = dict(
    sft_dir=i.model,
    pairs_path=i.pairs,
    out_dir=o.model,
    metrics_path=o.metrics,
    curve_path=o.curve,
    conversion_path=i.conversion,
    **settings,
)
run(
    sm,
    lambda: run_stage(
        train_dpo, kwargs, gpus=sm.resources.gpu, launch=p.launch, precision=settings["train"]["precision"]
    ),
)
