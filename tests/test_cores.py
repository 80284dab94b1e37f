"""Issue 15: the same config and seed give the same model results whatever `--cores` says.

torch's intra-op thread count decides the floating-point reduction order of training and generation.
sftdpo.runner sets it from `<stage>.resources.threads` (the config), not from the threads Snakemake
grants the job (capped by --cores), so -c1 and -c2 compute exactly the same numbers.
"""

import filecmp

import pytest
import yaml

from conftest import TINY, snakemake
from sftdpo.io import read_json

pytestmark = pytest.mark.e2e

GPU_STAGES = ("sft", "rollouts", "dpo", "evaluate")
MODEL_ARTIFACTS = [
    "rollouts/rollouts.parquet",
    "prefs/pairs.parquet",
    "eval/base.parquet",
    "eval/sft.parquet",
    "eval/dpo.parquet",
]


def test_results_do_not_depend_on_cores(tmp_path):
    # Two compute threads per model stage: with -c1 Snakemake grants each job one thread, with -c2 two.
    overlay = tmp_path / "threads.yaml"
    overlay.write_text(yaml.safe_dump({stage: {"resources": {"threads": 2}} for stage in GPU_STAGES}))
    runs = {}
    for cores in (1, 2):
        runs[cores] = tmp_path / f"c{cores}"
        runs[cores].mkdir()
        snakemake(f"-c{cores}", "--configfile", TINY, overlay, cwd=runs[cores])
    logs = (runs[1] / "logs/sft.log").read_text()
    assert "scheduled threads 1, compute threads 2" in logs  # the job got one core, torch still used two
    for cores, workdir in runs.items():
        for stage in ("sft", "dpo"):
            assert read_json(workdir / f"results/{stage}/metrics.json")["torch_threads"] == 2, (cores, stage)
    for name in MODEL_ARTIFACTS:
        assert filecmp.cmp(runs[1] / "results" / name, runs[2] / "results" / name, shallow=False), name
