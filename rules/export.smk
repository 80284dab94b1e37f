# Standalone models: one stage's model with its adapters merged, for use outside the pipeline.


rule export:
    """One stage's model (base, sft, dpo) as a standalone directory with a model card (adapters merged)."""
    input:
        model=stage_model,
        summary="results/report/summary.json",
    output:
        directory("results/export/{stage}"),
    log:
        "logs/export/{stage}.log",
    benchmark:
        "results/benchmarks/export/{stage}.tsv"
    conda:
        "../envs/train.yaml"
    params:
        code=code_fingerprint("sftdpo.export"),
        config=lambda wildcards: {
            key: config[key]
            for key in ("seed", "task", "model", wildcards.stage)
            if key in config
        },
    script:
        "../workflow/scripts/export.py"
