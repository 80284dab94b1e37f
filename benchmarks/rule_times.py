"""Print a markdown table of wall time and peak memory per job from Snakemake's `benchmark:` files.

    .venv/bin/python benchmarks/rule_times.py [results/benchmarks]

Run it after `make run`; the README's results table comes from it.
"""

import csv
import sys
from pathlib import Path


def main(root: str = "results/benchmarks") -> None:
    rows = []
    for path in sorted(Path(root).rglob("*.tsv")):
        with path.open() as fh:
            record = list(csv.DictReader(fh, delimiter="\t"))[-1]
        job = str(path.relative_to(root)).removesuffix(".tsv")
        rows.append((job, float(record["s"]), float(record["max_rss"])))
    if not rows:
        sys.exit(f"no benchmark files under {root}: run the pipeline first")
    print("| job | wall s | max RSS MB |\n|---|---|---|")
    for job, seconds, rss in sorted(rows, key=lambda r: -r[1]):
        print(f"| {job} | {seconds:.1f} | {rss:.0f} |")
    print(f"| **sum of jobs** | {sum(r[1] for r in rows):.1f} | |")


if __name__ == "__main__":
    main(*sys.argv[1:])
