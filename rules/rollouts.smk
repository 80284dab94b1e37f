# Rollouts from the SFT model (sharded, GPU rule) and preference pairs built from them.


rule rollouts:
    """k scored samples per train prompt from the SFT model, one shard (GPU rule; resumable)."""
    input:
        model="results/sft/adapter",
        train="results/data/train.parquet",
        val="results/data/val.parquet",
    output:
        "results/rollouts/shards/{shard}.parquet",
    log:
        "logs/rollouts/{shard}.log",
    benchmark:
        "results/benchmarks/rollouts/{shard}.tsv"
    conda:
        "../envs/train.yaml"
    threads: resources("rollouts")["threads"]
    resources:
        gpu=resources("rollouts")["gpu"],
        mem_mb=resources("rollouts")["mem_mb"],
        runtime=resources("rollouts")["runtime"],
    params:
        code=code_fingerprint("sftdpo.rollouts"),
        n_shards=config["rollouts"]["shards"],
        n_prompts=config["rollouts"]["n_prompts"],
        n_val_prompts=config["rollouts"]["n_val_prompts"],
        k=config["rollouts"]["k"],
        temperature=config["rollouts"]["temperature"],
        top_p=config["rollouts"]["top_p"],
        max_new_tokens=config["rollouts"]["max_new_tokens"],
        batch_size=config["rollouts"]["batch_size"],
        variants=config["rollouts"]["variants"],
        backend=config["rollouts"]["backend"],
        task_options=task_options(),
        seed=config["seed"],
        threads=resources("rollouts")["threads"],
        work_dir="work/rollouts",
    script:
        "../workflow/scripts/rollouts.py"


rule merge_rollouts:
    """The rollout shards in one table, sorted by id."""
    input:
        expand("results/rollouts/shards/{shard}.parquet", shard=shards("rollouts")),
    output:
        "results/rollouts/rollouts.parquet",
    log:
        "logs/merge_rollouts.log",
    benchmark:
        "results/benchmarks/merge_rollouts.tsv"
    conda:
        "../envs/data.yaml"
    params:
        code=code_fingerprint("sftdpo.io"),
    script:
        "../workflow/scripts/merge_rollouts.py"


rule preferences:
    """Preference pairs: correct over incorrect, then better over worse (TRL format)."""
    input:
        rollouts="results/rollouts/rollouts.parquet",
        tokenizer="results/sft/adapter",
    output:
        pairs="results/prefs/pairs.parquet",
        report="results/prefs/report.json",
    log:
        "logs/preferences.log",
    benchmark:
        "results/benchmarks/preferences.tsv"
    conda:
        "../envs/data.yaml"
    params:
        code=code_fingerprint("sftdpo.preferences"),
        max_pairs_per_prompt=config["preferences"]["max_pairs_per_prompt"],
        quality_margin=config["preferences"]["quality_margin"],
    script:
        "../workflow/scripts/preferences.py"
