"""Run-to-run noise of the default pipeline: the same config with several seeds, accuracy per stage.

    .venv/bin/python benchmarks/seed_noise.py --seeds 0 1 2           # ~3-4 min a seed on 2 cores
    .venv/bin/python benchmarks/seed_noise.py --seeds 0 1 2 --report  # only read finished runs

Each seed runs the whole DAG (`snakemake -c2 --config seed=N`) in benchmarks/runs/seed-N/ and the
table is read from each run's results/report/summary.json: test accuracy of SFT and DPO, DPO − SFT,
and their mean and standard deviation over seeds. A difference between two configs smaller than that
spread is noise. Extra `--configfile` overlays go to every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def run_seed(seed: int, out: Path, configfiles: list[str]) -> Path:
    workdir = out / f"seed-{seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    extra = ["--configfile", *configfiles] if configfiles else []
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-c2", *extra, "--config", f"seed={seed}"]
    with open(workdir / "snakemake.log", "w") as log:
        subprocess.run(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, check=True)
    return workdir / "results/report/summary.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/runs")
    parser.add_argument("--configfile", nargs="*", default=[])
    parser.add_argument("--report", action="store_true", help="do not run, only read the finished runs")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        path = args.out / f"seed-{seed}/results/report/summary.json"
        if not args.report:
            path = run_seed(seed, args.out, args.configfile)
        stages = json.loads(path.read_text())["stages"]
        sft, dpo = stages["sft"]["accuracy"], stages["dpo"]["accuracy"]
        rows.append((seed, sft, dpo, dpo - sft, stages["sft"]["n"]))
    print("| seed | SFT | DPO | DPO − SFT | test items |\n|---|---|---|---|---|")
    for seed, sft, dpo, delta, n in rows:
        print(f"| {seed} | {sft:.3f} | {dpo:.3f} | {delta:+.3f} | {n} |")
    if len(rows) > 1:
        for name, column in (("SFT", 1), ("DPO", 2), ("DPO − SFT", 3)):
            values = [r[column] for r in rows]
            print(
                f"\n{name}: mean {statistics.mean(values):.3f}, sd {statistics.stdev(values):.3f}, "
                f"range {min(values):.3f}–{max(values):.3f} over {len(values)} seeds",
                end="",
            )
        print()


if __name__ == "__main__":
    main()
