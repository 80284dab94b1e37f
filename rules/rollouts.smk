# Rollouts from the SFT model (sharded, GPU rule) and preference pairs built from them.


rule rollouts:
    """k scored samples per train prompt from the SFT model, one shard (GPU rule; resumable)."""
    input:
        model="results/sft/model",
        train="results/data/train.parquet",
        val="results/data/val.parquet",
        conversion="results/data/convert.json",
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
        tokenizer="results/sft/model",
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


# Iterative rounds (dpo.rounds > 1): round r samples from round r-1's DPO model and builds its own pairs.


use rule rollouts as rollouts_round with:
    input:
        model=previous_round_model,
        train="results/data/train.parquet",
        val="results/data/val.parquet",
        conversion="results/data/convert.json",
    output:
        "results/rollouts/round{round}/shards/{shard}.parquet",
    log:
        "logs/rollouts/round{round}/{shard}.log",
    benchmark:
        "results/benchmarks/rollouts/round{round}/{shard}.tsv"


use rule merge_rollouts as merge_rollouts_round with:
    input:
        lambda wildcards: expand(
            "results/rollouts/round{round}/shards/{shard}.parquet",
            round=wildcards.round,
            shard=shards("rollouts"),
        ),
    output:
        "results/rollouts/round{round}/rollouts.parquet",
    log:
        "logs/merge_rollouts/round{round}.log",
    benchmark:
        "results/benchmarks/merge_rollouts/round{round}.tsv"


use rule preferences as preferences_round with:
    input:
        rollouts="results/rollouts/round{round}/rollouts.parquet",
        tokenizer=previous_round_model,
    output:
        pairs="results/prefs/round{round}/pairs.parquet",
        report="results/prefs/round{round}/report.json",
    log:
        "logs/preferences/round{round}.log",
    benchmark:
        "results/benchmarks/preferences/round{round}.tsv"
