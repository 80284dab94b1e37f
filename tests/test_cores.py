"""Issue 15: the same config and seed give the same model results whatever `--cores` says.

torch's intra-op thread count decides the floating-point reduction order of training and generation.
sftdpo.runner sets it from `<stage>.resources.threads` (the config), not from the threads Snakemake
grants the job (capped by --cores), so -c1 and -c2 compute exactly the same numbers.
"""

import filecmp
import shutil

import pytest
import yaml

from conftest import TINY, job_counts, snakemake
from sftdpo.io import read_json

pytestmark = pytest.mark.e2e

GPU_STAGES = ("sft", "rollouts", "dpo", "evaluate")
# The chain through every model stage: SFT samples the rollouts, DPO trains on their pairs, evaluate runs DPO.
MODEL_ARTIFACTS = ["rollouts/rollouts.parquet", "prefs/pairs.parquet", "eval/dpo.parquet"]


def test_results_do_not_depend_on_cores(tiny_run, tmp_path):
    # Two compute threads per model stage: with -c1 Snakemake grants each job one thread, with -c2 two.
    # The data stages of the finished tiny run are reused (threads is a model-stage param).
    overlay = {stage: {"resources": {"threads": 2}} for stage in GPU_STAGES}
    runs = {}
    for cores in (1, 2):
        runs[cores] = tmp_path / f"c{cores}"
        shutil.copytree(tiny_run[0], runs[cores], symlinks=True, ignore=shutil.ignore_patterns("locks"))
        (runs[cores] / "threads.yaml").write_text(yaml.safe_dump(overlay))
        proc = snakemake(
            "results/eval/dpo.parquet", f"-c{cores}", "--configfile", TINY, "threads.yaml", cwd=runs[cores]
        )
        ran = job_counts(proc.stdout + proc.stderr)
        assert ran.get("sft") == 1 and "split" not in ran, ran  # model stages only
    logs = (runs[1] / "logs/sft.log").read_text()
    assert "scheduled threads 1, compute threads 2" in logs  # the job got one core, torch still used two
    for workdir in runs.values():
        for stage in ("sft", "dpo"):
            metrics = read_json(workdir / f"results/{stage}/metrics.json")
            assert metrics["torch_threads"] == 2, (workdir.name, stage)
    for name in MODEL_ARTIFACTS:
        assert filecmp.cmp(runs[1] / "results" / name, runs[2] / "results" / name, shallow=False), name
