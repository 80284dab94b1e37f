# Rollouts from the SFT model (sharded, GPU rule) and preference pairs built from them.


rule rollouts:
    input:
        model="results/sft/adapter",
        train="results/data/train.parquet",
    output:
        "results/rollouts/shards/{shard}.parquet",
    log:
        "logs/rollouts/{shard}.log",
    benchmark:
        "results/benchmarks/rollouts/{shard}.tsv"
    conda:
        "../envs/train.yaml"
    threads: gpu_resources("rollouts").get("threads", 2)
    resources:
        gpu=gpu_resources("rollouts").get("gpu", 1),
        mem_mb=gpu_resources("rollouts").get("mem_mb", 8000),
        runtime=gpu_resources("rollouts").get("runtime", 60),
    params:
        code=code_fingerprint("sftdpo.rollouts"),
        n_shards=config["rollouts"]["shards"],
        n_prompts=config["rollouts"]["n_prompts"],
        k=config["rollouts"]["k"],
        temperature=config["rollouts"]["temperature"],
        top_p=config["rollouts"].get("top_p", 1.0),
        max_new_tokens=config["rollouts"]["max_new_tokens"],
        batch_size=config["rollouts"]["batch_size"],
        variants=config["rollouts"].get("variants", []),
        backend=config["rollouts"].get("backend", "auto"),
        task_options=task_options(),
        seed=config["seed"],
        work_dir="work/rollouts",
    script:
        "../workflow/scripts/rollouts.py"


rule merge_rollouts:
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
    input:
        "results/rollouts/rollouts.parquet",
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
