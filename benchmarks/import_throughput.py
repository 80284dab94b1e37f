"""Import and validation throughput on the full GSM8K train file (7,473 rows); prints rows/s.

    .venv/bin/python benchmarks/import_throughput.py [path/to/train.jsonl] [--repeats 3]

Stages, each timed in this process (median of the repeats, fresh output directory each time):
- parse: read + convert the JSONL rows (FilesExpert.shard_problems: JSON parsing, format checks);
- import: the whole collect shard (`collect.expert: files`, one shard): parse, progress file, verifier
  on every row, parquet and summary;
- validate: the validate stage on the imported rows (integrity, duplicates, verifier, gates, plots,
  reports).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sftdpo.collect import collect_shard  # noqa: E402
from sftdpo.importers import FilesExpert  # noqa: E402
from sftdpo.tasks import get_task  # noqa: E402
from sftdpo.validate import validate  # noqa: E402

DEFAULT = ROOT.parent / "shared" / "datasets" / "gsm8k" / "train.jsonl"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = str(Path(args.path).resolve())
    if not Path(path).exists():
        raise SystemExit(f"{path} not found: pass the GSM8K train.jsonl path")
    options = {"paths": [path], "format": "gsm8k"}
    times: dict[str, list[float]] = {"parse": [], "import": [], "validate": []}
    rows = 0
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t, problems = timed(lambda: FilesExpert(get_task("gsm8k"), **options).shard_problems(0, 1))
            times["parse"].append(t)
            t, frame = timed(
                lambda: collect_shard(
                    task="gsm8k",
                    task_options={},
                    n_problems=0,
                    expert="files",
                    expert_options=options,
                    seed=0,
                    shard=0,
                    n_shards=1,
                    progress_path=f"{tmp}/progress.jsonl",
                    out_path=f"{tmp}/demos.parquet",
                    summary_path=f"{tmp}/summary.json",
                    flush_every=1000,
                )
            )
            times["import"].append(t)
            rows = len(frame)
            assert rows == len(problems) and frame["correct"].all()
            t, stats = timed(
                lambda: validate(
                    demos_path=f"{tmp}/demos.parquet",
                    validated_path=f"{tmp}/validated.parquet",
                    rejected_path=f"{tmp}/rejected.parquet",
                    report_path=f"{tmp}/validation.json",
                    plot_paths={k: f"{tmp}/{k}.png" for k in ("difficulty", "lengths", "rejections")},
                    task_options={},
                    max_prompt_chars=1500,
                    max_completion_chars=3000,
                    gates={"max_rejected_fraction": 0.0, "min_rows": 1, "min_rows_per_difficulty": 1},
                )
            )
            times["validate"].append(t)
            assert stats["n_kept"] == rows
    print(f"GSM8K import/validate throughput: {rows:,} rows of {path}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"median of {args.repeats} runs"
    )
    print("| stage | seconds | rows/s |\n|---|---|---|")
    for stage, values in times.items():
        median = statistics.median(values)
        print(f"| {stage} | {median:.3f} | {rows / median:,.0f} |")


if __name__ == "__main__":
    main()
