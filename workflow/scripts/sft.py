"""Rule sft: supervised fine-tuning (adapter: reads `snakemake`, calls the library).

With resources.gpu > 1 (and that many GPUs visible) training runs under `accelerate launch`
(sftdpo.launch: DeepSpeed ZeRO-2 by default, `sft.launch`); otherwise in-process.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.launch import run_stage
from sftdpo.sft import train_sft

sm = snakemake  # noqa: F821
i, o, p = sm.input, sm.output, sm.params
kwargs = dict(
    base_dir=i.model,
    train_path=i.train,
    val_path=i.val,
    tokens_path=i.tokens,
    out_dir=o.model,
    metrics_path=o.metrics,
    curve_path=o.curve,
    curriculum_path=o.curriculum,
    work_dir=p.work_dir,
    tracking_dir=p.tracking_dir,
    train=p.train,
    lora=p.lora,
    eval_rows=p.eval_rows,
    curriculum=p.curriculum,
    evaluation=p.evaluation,
    seed=p.seed,
    conversion_path=i.conversion,
)
run(
    sm,
    lambda: run_stage(train_sft, kwargs, gpus=sm.resources.gpu, launch=p.launch, precision=p.train["precision"]),
)
