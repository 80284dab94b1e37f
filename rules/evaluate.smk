# Evaluation of each stage's model on the test split (GPU rule) and the final report.


rule evaluate:
    """Greedy evaluation of one stage's model (base, sft, dpo, dpo-<variant>) on the test split (GPU rule)."""
    input:
        model=stage_model,
        split="results/data/test.parquet",
        conversion="results/data/convert.json",
    output:
        "results/eval/{stage}.parquet",
    log:
        "logs/evaluate/{stage}.log",
    benchmark:
        "results/benchmarks/evaluate/{stage}.tsv"
    conda:
        "../envs/train.yaml"
    threads: resources("evaluate")["threads"]
    resources:
        gpu=resources("evaluate")["gpu"],
        mem_mb=resources("evaluate")["mem_mb"],
        runtime=resources("evaluate")["runtime"],
    params:
        code=code_fingerprint("sftdpo.evaluate"),
        max_new_tokens=config["evaluate"]["max_new_tokens"],
        batch_size=config["evaluate"]["batch_size"],
        kv_cache_mb=config["evaluate"]["kv_cache_mb"],
        task_options=task_options(),
        seed=config["seed"],
        threads=resources("evaluate")["threads"],
    script:
        "../workflow/scripts/evaluate.py"


use rule evaluate as evaluate_val with:
    input:
        model=stage_model,
        split="results/data/val.parquet",
        conversion="results/data/convert.json",
    output:
        "results/eval/val/{stage}.parquet",
    log:
        "logs/evaluate/val/{stage}.log",
    benchmark:
        "results/benchmarks/evaluate/val/{stage}.tsv"


rule report:
    """Accuracy per stage with paired bootstrap CIs, tables (markdown, HTML); the DPO run best on val is "DPO"."""
    input:
        evals=expand(
            "results/eval/{stage}.parquet", stage=["base", "sft", *dpo_stages()]
        ),
        val_evals=expand(
            "results/eval/val/{stage}.parquet", stage=["sft", *dpo_stages()]
        ),
        dpo_metrics=dpo_metrics_files(),
        validation="results/demos/validation.json",
        split="results/data/split.json",
        sft="results/sft/metrics.json",
        curriculum="results/sft/curriculum.json",
        preferences="results/prefs/report.json",
    output:
        summary="results/report/summary.json",
        plot=report(
            "results/report/comparison.png",
            caption="../workflow/report/comparison.rst",
            category="3. Evaluation",
        ),
        markdown="results/report/report.md",
        accuracy=report(
            "results/report/accuracy.html",
            caption="../workflow/report/accuracy.rst",
            category="3. Evaluation",
        ),
        samples=report(
            "results/report/samples.html",
            caption="../workflow/report/samples.rst",
            category="3. Evaluation",
        ),
        rejections=report(
            "results/report/rejections.html",
            caption="../workflow/report/rejections.rst",
            category="1. Validation",
        ),
        pairs=report(
            "results/report/pairs.html",
            caption="../workflow/report/pairs.rst",
            category="2. Training",
        ),
    log:
        "logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        "../envs/data.yaml"
    params:
        code=code_fingerprint("sftdpo.report"),
        bootstrap_samples=config["report"]["bootstrap_samples"],
        dpo_stages=dpo_stages(),
        samples_shown=config["report"]["samples_shown"],
        seed=config["seed"],
    script:
        "../workflow/scripts/report.py"
