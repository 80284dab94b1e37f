# Training stages: SFT on the train split, DPO on the preference pairs (GPU rules).


rule sft:
    input:
        model="results/base/model",
        train="results/data/train.parquet",
        val="results/data/val.parquet",
        tokens="results/data/tokens.h5",
    output:
        model=directory("results/sft/adapter"),
        metrics="results/sft/metrics.json",
        curve=report(
            "results/sft/loss.png",
            caption="../workflow/report/sft.rst",
            category="2. Training",
        ),
    log:
        "logs/sft.log",
    benchmark:
        "results/benchmarks/sft.tsv"
    conda:
        "../envs/train.yaml"
    threads: gpu_resources("sft").get("threads", 2)
    resources:
        gpu=gpu_resources("sft").get("gpu", 1),
        mem_mb=gpu_resources("sft").get("mem_mb", 8000),
        runtime=gpu_resources("sft").get("runtime", 120),
    params:
        code=code_fingerprint("sftdpo.sft"),
        train=config["sft"]["train"],
        lora=config["sft"].get("lora"),
        launch=config["sft"].get("launch", {}),
        eval_rows=config["sft"].get("eval_rows", 200),
        seed=config["seed"],
        work_dir="work/sft",
    script:
        "../workflow/scripts/sft.py"


rule dpo:
    input:
        model="results/sft/adapter",
        pairs="results/prefs/pairs.parquet",
    output:
        model=directory("results/dpo/adapter"),
        metrics="results/dpo/metrics.json",
        curve=report(
            "results/dpo/curves.png",
            caption="../workflow/report/dpo.rst",
            category="2. Training",
        ),
    log:
        "logs/dpo.log",
    benchmark:
        "results/benchmarks/dpo.tsv"
    conda:
        "../envs/train.yaml"
    threads: gpu_resources("dpo").get("threads", 2)
    resources:
        gpu=gpu_resources("dpo").get("gpu", 1),
        mem_mb=gpu_resources("dpo").get("mem_mb", 8000),
        runtime=gpu_resources("dpo").get("runtime", 120),
    params:
        code=code_fingerprint("sftdpo.dpo"),
        train=config["dpo"]["train"],
        beta=config["dpo"]["beta"],
        loss_type=config["dpo"]["loss_type"],
        lora=config["dpo"].get("lora"),
        launch=config["dpo"].get("launch", {}),
        seed=config["seed"],
        work_dir="work/dpo",
    script:
        "../workflow/scripts/dpo.py"
