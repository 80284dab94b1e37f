# Data stages: base model/tokenizer, expert collection, validation, conversion, split.


rule base_model:
    """The base model and tokenizer: a tiny model from scratch, or a Hugging Face id/path."""
    input:
        base_model_inputs,
    output:
        directory("results/base/model"),
    log:
        "logs/base_model.log",
    benchmark:
        "results/benchmarks/base_model.tsv"
    conda:
        "../envs/train.yaml"
    params:
        code=base_model_code(),
        name_or_path=config["model"]["name_or_path"],
        revision=config["model"]["revision"],
        chat_template=config["model"]["chat_template"],
        scratch=config["model"]["scratch"],
        trust_remote_code=config["model"]["trust_remote_code"],
        task=config["task"]["name"],
        task_options=task_options(),
        tokenizer_files=tokenizer_files(),
        seed=config["seed"],
    script:
        "../workflow/scripts/base_model.py"


rule problems:
    """The task's problems, made once for every collect shard (a shard reads its own row group)."""
    input:
        task_data_files(),
    output:
        "results/demos/problems.parquet",
    log:
        "logs/problems.log",
    benchmark:
        "results/benchmarks/problems.tsv"
    conda:
        "../envs/data.yaml"
    params:
        code=code_fingerprint("sftdpo.collect"),
        task=config["task"]["name"],
        task_options=task_options(),
        n_problems=config["task"]["n_problems"],
        n_shards=config["collect"]["shards"],
        seed=config["seed"],
    script:
        "../workflow/scripts/problems.py"


rule collect:
    """One shard of expert demonstrations (resumable: progress in work/collect/)."""
    input:
        data=collect_inputs,
        problems=collect_problems,
    output:
        demos="results/demos/shards/{shard}.parquet",
        summary="results/demos/shards/{shard}.json",
    log:
        "logs/collect/{shard}.log",
    benchmark:
        "results/benchmarks/collect/{shard}.tsv"
    conda:
        "../envs/data.yaml"
    params:
        code=collect_code(),
        task=config["task"]["name"],
        task_options=task_options(),
        n_problems=config["task"]["n_problems"],
        expert=config["collect"]["expert"],
        expert_options=expert_options(),
        n_shards=config["collect"]["shards"],
        flush_every=config["collect"]["flush_every"],
        seed=config["seed"],
        work_dir="work/collect",
    script:
        "../workflow/scripts/collect.py"


rule merge_demos:
    """The demonstration shards in one table, sorted by id."""
    input:
        expand("results/demos/shards/{shard}.parquet", shard=shards("collect")),
    output:
        "results/demos/demos.parquet",
    log:
        "logs/merge_demos.log",
    benchmark:
        "results/benchmarks/merge_demos.tsv"
    conda:
        "../envs/data.yaml"
    params:
        code=code_fingerprint("sftdpo.io"),
    script:
        "../workflow/scripts/merge_demos.py"


rule validate_shard:
    """The checks of one demo shard that need only its rows: integrity, the verifier, digests of prompts and answers."""
    input:
        "results/demos/shards/{shard}.parquet",
    output:
        "results/demos/checks/{shard}.parquet",
    log:
        "logs/validate_shard/{shard}.log",
    benchmark:
        "results/benchmarks/validate_shard/{shard}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 2  # processes that run the verifier side by side (from 131k rows); the outputs are the same for any number
    params:
        code=code_fingerprint("sftdpo.validate"),
        task_options=task_options(),
        max_prompt_chars=config["validate"]["max_prompt_chars"],
        max_completion_chars=config["validate"]["max_completion_chars"],
    script:
        "../workflow/scripts/validate_shard.py"


rule validate:
    """Re-check every demonstration, keep rejected rows with a reason, stop on failed quality gates."""
    input:
        demos="results/demos/demos.parquet",
        checks=expand("results/demos/checks/{shard}.parquet", shard=shards("collect")),
        # The shard summaries list the rows the importer could not read (collect.expert: files).
        summaries=expand("results/demos/shards/{shard}.json", shard=shards("collect")),
    output:
        validated="results/demos/validated.parquet",
        rejected="results/demos/rejected.parquet",
        report="results/demos/validation.json",
        difficulty=report(
            "results/demos/plots/difficulty.png",
            caption="../workflow/report/validation.rst",
            category="1. Validation",
        ),
        lengths=report(
            "results/demos/plots/lengths.png",
            caption="../workflow/report/validation.rst",
            category="1. Validation",
        ),
        rejections=report(
            "results/demos/plots/rejections.png",
            caption="../workflow/report/validation.rst",
            category="1. Validation",
        ),
    log:
        "logs/validate.log",
    benchmark:
        "results/benchmarks/validate.tsv"
    conda:
        "../envs/data.yaml"
    params:
        code=code_fingerprint("sftdpo.validate"),
        gates=config["validate"]["gates"],
    script:
        "../workflow/scripts/validate.py"


rule convert_shard:
    """One shard of the validated rows as chat rows and a token tensor (shards run side by side, on any node)."""
    input:
        validated="results/demos/validated.parquet",
        model="results/base/model",
    output:
        chat="results/data/shards/{shard}.chat.parquet",
        tokens="results/data/shards/{shard}.tokens.h5",
        summary="results/data/shards/{shard}.summary.json",
    log:
        "logs/convert_shard/{shard}.log",
    benchmark:
        "results/benchmarks/convert_shard/{shard}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 2  # 1-2: one process, encoding a block while it renders the next; more: worker processes; same outputs
    params:
        code=code_fingerprint("sftdpo.convert"),
        n_shards=config["convert"]["shards"],
        max_length=config["convert"]["max_length"],
        system_prompt=config["convert"]["system_prompt"],
    script:
        "../workflow/scripts/convert_shard.py"


rule convert:
    """Chat rows (TRL conversational) and the token tensor [N, L, 3] in HDF5: the convert shards in one, gates on the totals."""
    input:
        # the shards' chat tables first: lineage walks a row to the first input that holds its id
        chat=expand("results/data/shards/{shard}.chat.parquet", shard=shards("convert")),
        tokens=expand("results/data/shards/{shard}.tokens.h5", shard=shards("convert")),
        summaries=expand(
            "results/data/shards/{shard}.summary.json", shard=shards("convert")
        ),
        validated="results/demos/validated.parquet",
    output:
        chat="results/data/chat.parquet",
        tokens="results/data/tokens.h5",
        report="results/data/convert.json",
    log:
        "logs/convert.log",
    benchmark:
        "results/benchmarks/convert.tsv"
    conda:
        "../envs/data.yaml"
    params:
        code=code_fingerprint("sftdpo.convert"),
        max_length=config["convert"]["max_length"],
        gates=config["convert"]["gates"],
        system_prompt=config["convert"]["system_prompt"],
    script:
        "../workflow/scripts/convert.py"


rule split:
    """Stratified, seeded train/val/test split; no prompt in two splits."""
    input:
        "results/data/chat.parquet",
    output:
        train="results/data/train.parquet",
        val="results/data/val.parquet",
        test="results/data/test.parquet",
        report="results/data/split.json",
    log:
        "logs/split.log",
    benchmark:
        "results/benchmarks/split.tsv"
    conda:
        "../envs/data.yaml"
    params:
        code=code_fingerprint("sftdpo.split"),
        fractions=config["split"]["fractions"],
        strata=config["split"]["strata"],
        seed=config["seed"],
    script:
        "../workflow/scripts/split.py"
