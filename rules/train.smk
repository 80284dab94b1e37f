# Training stages: SFT on the train split, DPO on the preference pairs (GPU rules).


rule sft:
    """Supervised fine-tuning on the train split (GPU rule; resumes from work/sft/)."""
    input:
        model="results/base/model",
        train="results/data/train.parquet",
        val="results/data/val.parquet",
        tokens="results/data/tokens.h5",
        conversion="results/data/convert.json",
    output:
        model=directory("results/sft/model"),
        metrics="results/sft/metrics.json",
        curriculum="results/sft/curriculum.json",
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
    threads: resources("sft")["threads"]
    resources:
        gpu=resources("sft")["gpu"],
        mem_mb=resources("sft")["mem_mb"],
        runtime=resources("sft")["runtime"],
    params:
        code=code_fingerprint("sftdpo.sft"),
        train=config["sft"]["train"],
        lora=config["sft"]["lora"],
        launch=config["sft"]["launch"],
        eval_rows=config["sft"]["eval_rows"],
        curriculum=config["sft"]["curriculum"],
        evaluation=curriculum_evaluation(),
        seed=config["seed"],
        threads=resources("sft")["threads"],
        work_dir="work/sft",
        tracking_dir=TRACKING_DIR,
    script:
        "../workflow/scripts/sft.py"


rule dpo:
    """DPO from the SFT model, reference = SFT, no merge; dpo_variant: other settings, dpo_round: from round r-1's model (GPU rule; resumable)."""
    input:
        model="results/sft/model",
        pairs="results/prefs/pairs.parquet",
        conversion="results/data/convert.json",
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
    threads: resources("dpo")["threads"]
    resources:
        gpu=resources("dpo")["gpu"],
        mem_mb=resources("dpo")["mem_mb"],
        runtime=resources("dpo")["runtime"],
    params:
        code=code_fingerprint("sftdpo.dpo"),
        settings=dpo_run,
        launch=config["dpo"]["launch"],
        threads=resources("dpo")["threads"],
    script:
        "../workflow/scripts/dpo.py"


use rule dpo as dpo_variant with:
    output:
        model=directory("results/dpo/{variant}/adapter"),
        metrics="results/dpo/{variant}/metrics.json",
        curve=report(
            "results/dpo/{variant}/curves.png",
            caption="../workflow/report/dpo.rst",
            category="2. Training",
            subcategory="DPO variants",
        ),
    log:
        "logs/dpo/{variant}.log",
    benchmark:
        "results/benchmarks/dpo/{variant}.tsv"


use rule dpo as dpo_round with:
    input:
        model=previous_round_model,
        pairs="results/prefs/round{round}/pairs.parquet",
        conversion="results/data/convert.json",
    output:
        model=directory("results/dpo/round{round}/adapter"),
        metrics="results/dpo/round{round}/metrics.json",
        curve=report(
            "results/dpo/round{round}/curves.png",
            caption="../workflow/report/dpo.rst",
            category="2. Training",
            subcategory="DPO rounds",
        ),
    log:
        "logs/dpo/round{round}.log",
    benchmark:
        "results/benchmarks/dpo/round{round}.tsv"
