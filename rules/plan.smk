# The plan before submit (`make plan`): per GPU rule, parameters, tokens, memory, wall time and whether
# `<stage>.resources` fits. No inputs: it reads whatever data is there, runs before anything else and is
# not part of `all` (run it with --forcerun plan to refresh it after the data changed).


rule plan:
    """Estimates per GPU rule (memory, wall time, fit of <stage>.resources) without running any job."""
    output:
        json="results/plan/plan.json",
        table="results/plan/plan.md",
    log:
        "logs/plan.log",
    conda:
        # transformers and accelerate build the model on the meta device
        "../envs/train.yaml"
    params:
        code=code_fingerprint("sftdpo.plan"),
        config={
            key: config[key]
            for key in (
                "task",
                "model",
                "convert",
                "split",
                "sft",
                "rollouts",
                "dpo",
                "evaluate",
            )
        },
        # The GPU kind of the Slurm profile (SFTDPO_GPU_MODEL); unset: a visible GPU, else the CPU.
        device=os.environ.get("SFTDPO_GPU_MODEL") or "auto",
    script:
        "../workflow/scripts/plan.py"
