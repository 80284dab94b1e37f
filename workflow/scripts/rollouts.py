"""Rule rollouts: k scored samples per train prompt, one shard (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.rollouts import rollout_shard

sm = snakemake  # noqa: F821
i, p = sm.input, sm.params
run(
    sm,
    lambda: rollout_shard(
        model_dir=i.model,
        train_path=i.train,
        val_path=i.val,
        out_path=sm.output[0],
        work_dir=p.work_dir,
        shard=int(sm.wildcards.shard),
        n_shards=p.n_shards,
        n_prompts=p.n_prompts,
        n_val_prompts=p.n_val_prompts,
        k=p.k,
        temperature=p.temperature,
        top_p=p.top_p,
        max_new_tokens=p.max_new_tokens,
        batch_size=p.batch_size,
        variants=p.variants,
        backend=p.backend,
        task_options=p.task_options,
        seed=p.seed,
        conversion_path=i.conversion,
    ),
)
