# Evaluation of each stage's model on the test split (GPU rule) and the final report.


rule evaluate:
    input:
        model=stage_model,
        test="results/data/test.parquet",
    output:
        "results/eval/{stage}.parquet",
    log:
        "logs/evaluate/{stage}.log",
    benchmark:
        "results/benchmarks/evaluate/{stage}.tsv"
    conda:
        "../envs/train.yaml"
    threads: gpu_resources("evaluate").get("threads", 2)
    resources:
        gpu=gpu_resources("evaluate").get("gpu", 1),
        mem_mb=gpu_resources("evaluate").get("mem_mb", 8000),
        runtime=gpu_resources("evaluate").get("runtime", 60),
    params:
        code=code_fingerprint("sftdpo.evaluate"),
        max_new_tokens=config["evaluate"]["max_new_tokens"],
        batch_size=config["evaluate"]["batch_size"],
        task_options=task_options(),
        seed=config["seed"],
    script:
        "../workflow/scripts/evaluate.py"


rule report:
    input:
        evals=expand("results/eval/{stage}.parquet", stage=STAGE_MODEL),
        validation="results/demos/validation.json",
        split="results/data/split.json",
        sft="results/sft/metrics.json",
        preferences="results/prefs/report.json",
        dpo="results/dpo/metrics.json",
    output:
        summary="results/report/summary.json",
        plot=report(
            "results/report/comparison.png",
            caption="../workflow/report/comparison.rst",
            category="3. Evaluation",
        ),
        markdown="results/report/report.md",
    log:
        "logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        "../envs/data.yaml"
    params:
        code=code_fingerprint("sftdpo.report"),
        bootstrap_samples=config["report"]["bootstrap_samples"],
        seed=config["seed"],
    script:
        "../workflow/scripts/report.py"
