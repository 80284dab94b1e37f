"""Run-to-run noise and the README's results table: the same config with several seeds, accuracy per stage.

    .venv/bin/python benchmarks/seed_noise.py --seeds 0 1 2           # the whole DAG once per seed
    .venv/bin/python benchmarks/seed_noise.py --seeds 0 1 2 --report  # only read finished runs
    .venv/bin/python benchmarks/seed_noise.py --seeds 0 1 2 --report --save  # and update the README

Each seed runs the whole DAG (`snakemake -c2 --config seed=N`) in benchmarks/runs/seed-N/ and the
table is read from each run's results/report/summary.json: test accuracy of SFT and of DPO (the run
selected on val), DPO − SFT with its paired-bootstrap CI, and their mean and spread over seeds. Extra
`--configfile` overlays go to every run.

`--save` copies each summary (with the run's wall time and overlays) to benchmarks/results/seeds/ and
rewrites the README's results table from those files (between the `results-table` markers);
tests/test_readme_results.py checks that the README still says what those files say.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from readme_table import replace_table

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SAVED = ROOT / "benchmarks/results/seeds"
TABLE = ("results-table", "benchmarks/seed_noise.py --save")  # the README table's marker name and command


def run_seed(seed: int, out: Path, configfiles: list[str]) -> Path:
    workdir = out / f"seed-{seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    extra = ["--configfile", *configfiles] if configfiles else []
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-c2", *extra, "--config", f"seed={seed}"]
    start = time.perf_counter()
    with open(workdir / "snakemake.log", "w") as log:
        subprocess.run(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, check=True)
    (workdir / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
    return workdir / "results/report/summary.json"


def ci(values: list[float]) -> str:
    return f"[{values[0]:+.3f}, {values[1]:+.3f}]"


def render(records: list[dict]) -> str:
    """The results table (markdown) from saved records: {seed, wall_seconds, configfiles, summary}."""
    lines = [
        "| seed | test items | SFT | DPO run (chosen on val) | DPO | DPO − SFT (95% CI) | DAG wall |",
        "|---|---|---|---|---|---|---|",
    ]
    deltas = []
    for record in records:
        summary = record["summary"]
        stages, delta = summary["stages"], summary["deltas"]["dpo-sft"]
        deltas.append(delta)
        wall = f"{record['wall_seconds'] / 60:.1f} min" if record.get("wall_seconds") else "n/a"
        lines.append(
            f"| {record['seed']} | {stages['sft']['n']} | {stages['sft']['accuracy']:.3f} | {stages['dpo']['run']} | "
            f"{stages['dpo']['accuracy']:.3f} | {delta['mean']:+.3f} {ci(delta['ci95'])} | {wall} |"
        )
    if len(records) > 1:
        means = [d["mean"] for d in deltas]
        lines += [
            "",
            f"DPO − SFT over {len(records)} seeds: mean {statistics.mean(means):+.3f}, range "
            f"{min(means):+.3f} to {max(means):+.3f}; CI95 lower bound above 0 on "
            f"{sum(d['ci95'][0] > 0 for d in deltas)} of {len(records)} seeds.",
        ]
    overlays = sorted({c for record in records for c in record.get("configfiles", [])})
    lines += ["", f"Config: the default{' + ' + ', '.join(overlays) if overlays else ''}."]
    return "\n".join(lines)


def saved_records() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(SAVED.glob("seed-*.json"))]


def save(records: list[dict]) -> None:
    SAVED.mkdir(parents=True, exist_ok=True)
    for record in records:
        (SAVED / f"seed-{record['seed']}.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    replace_table(TABLE[0], render(saved_records()), TABLE[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/runs")
    parser.add_argument("--configfile", nargs="*", default=[])
    parser.add_argument("--report", action="store_true", help="do not run, only read the finished runs")
    parser.add_argument("--save", action="store_true", help="keep the summaries and rewrite the README table")
    args = parser.parse_args()
    records = []
    for seed in args.seeds:
        path = args.out / f"seed-{seed}/results/report/summary.json"
        if not args.report:
            path = run_seed(seed, args.out, args.configfile)
        wall = path.parents[2] / "wall_seconds.txt"
        records.append(
            {
                "seed": seed,
                "wall_seconds": float(wall.read_text()) if wall.exists() else None,
                "configfiles": [
                    str(Path(c).resolve().relative_to(ROOT)) if ROOT in Path(c).resolve().parents else Path(c).name
                    for c in args.configfile
                ],  # fmt: skip
                "summary": json.loads(path.read_text()),
            }
        )
    print(render(records))
    if args.save:
        save(records)
        print(f"\nsaved to {SAVED.relative_to(ROOT)}/ and the README's results table")


if __name__ == "__main__":
    main()
