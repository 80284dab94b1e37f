"""Data stages at scale: problems, collect, validate, convert and split of N program-expert rows, via snakemake.

    .venv/bin/python benchmarks/data_stages.py --rows 100000 400000 1000000 --save
    .venv/bin/python benchmarks/data_stages.py --rows 1000000 --shards 8   # collect.shards = convert.shards = 8

Each size runs `snakemake results/data/split.json -c2` in a fresh directory (the default config, a task family
large enough for N: `task.arithmetic` max_ops 4, max_operand 99) and reads the jobs' `benchmark:` files: wall
seconds (summed over a stage's shards, and its longest shard: the stage's wall on enough nodes), rows per second
and peak RSS per stage. `--save` keeps the figures in benchmarks/results/data_stages.json and rewrites the README's
table between the `data-stages-table` markers (the machine is named there); with `--shards`,
benchmarks/results/data_stages_sharded.json and the `data-stages-sharded-table`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from readme_table import replace_table

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "benchmarks" / "results" / "data_stages.json"
TABLE = ("data-stages-table", "benchmarks/data_stages.py --save")  # the README table's marker name and command
TABLE_SHARDED = ("data-stages-sharded-table", "benchmarks/data_stages.py --rows 1000000 --shards 8 --save")
SAVED_SHARDED = ROOT / "benchmarks" / "results" / "data_stages_sharded.json"
STAGES = ("problems", "collect", "merge_demos", "validate_shard", "validate", "convert_shard", "convert", "split")
# convert and split see the kept rows
SEE_EVERY_ROW = {"problems", "collect", "merge_demos", "validate_shard", "validate"}


def stage_times(benchmarks: Path) -> dict[str, dict[str, float]]:
    """Wall seconds (summed over shards; `longest_shard_seconds`: the longest one) and peak RSS (max over shards) per
    stage from Snakemake's TSVs."""
    out: dict[str, dict[str, float]] = {}
    for path in sorted(benchmarks.rglob("*.tsv")):
        stage = path.relative_to(benchmarks).parts[0].removesuffix(".tsv")
        if stage not in STAGES:
            continue
        with path.open() as fh:
            record = list(csv.DictReader(fh, delimiter="\t"))[-1]
        seen = out.setdefault(stage, {"seconds": 0.0, "longest_shard_seconds": 0.0, "max_rss_mb": 0.0, "jobs": 0})
        seen["jobs"] += 1
        seen["seconds"] += float(record["s"])
        seen["longest_shard_seconds"] = max(seen["longest_shard_seconds"], float(record["s"]))
        seen["max_rss_mb"] = max(seen["max_rss_mb"], float(record["max_rss"]))
    return out


# The tokenizer's own batch calls on the conversations convert made (issue 11's ceiling for convert): the rendered
# texts of up to `sample` rows of chat.parquet (rendering not timed), their ids taken, in a fresh process; the faster
# of `encode_batch` and `encode_batch_fast` (ids only: convert's call), in blocks of convert's size (encode_batch_fast
# on 200k texts at once was 40% slower than in blocks, here). Then the prompts too (rendered with the generation
# prompt): convert tokenizes both, to find the loss mask's start and check the template is prefix-consistent.
CEILING = """
import json, sys, time
import pyarrow.parquet as pq
from sftdpo.convert import BATCH
from sftdpo.modeling import load_tokenizer
workdir, sample = sys.argv[1], int(sys.argv[2])
tokenizer = load_tokenizer(workdir + "/results/base/model")
chat = pq.read_table(workdir + "/results/data/chat.parquet", columns=["messages", "prompt"]).slice(0, sample)
conversations = tokenizer.apply_chat_template(chat["messages"].to_pylist(), tokenize=False)
prompts = tokenizer.apply_chat_template(chat["prompt"].to_pylist(), tokenize=False, add_generation_prompt=True)
backend = tokenizer.backend_tokenizer


def seconds(encode, texts):
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        [encoding.ids for encoding in encode(texts[start : start + BATCH], add_special_tokens=False)]
    return time.perf_counter() - started


best = {}
for name in ("encode_batch", "encode_batch_fast"):
    times = [seconds(getattr(backend, name), texts) for texts in (conversations, prompts)]
    if not best or times[0] < best["seconds"]:
        best = {"call": name, "seconds": times[0], "prompt_seconds": times[1]}
print(json.dumps({"rows": len(conversations), **best}))
"""


def tokenizer_ceiling(workdir: Path, sample: int = 100_000) -> dict[str, dict]:
    """Rows/s of the tokenizer's batch call on convert's conversations (and with their prompts): on one thread
    (TOKENIZERS_PARALLELISM false) and on every core (its default)."""
    out = {}
    for name, parallel in (("one_thread", "false"), ("all_cores", "true")):
        env = {**os.environ, "TOKENIZERS_PARALLELISM": parallel}
        done = subprocess.run([sys.executable, "-c", CEILING, str(workdir), str(sample)], env=env, check=True,
                              capture_output=True, text=True)  # fmt: skip
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
        out[name]["rows_per_second"] = out[name]["rows"] / out[name]["seconds"]
        out[name]["with_prompts_rows_per_second"] = out[name]["rows"] / (
            out[name]["seconds"] + out[name]["prompt_seconds"]
        )
    return out


def run(rows: int, workdir: Path, shards: int | None = None) -> dict:
    wall = build(rows, workdir, shards)
    stages = stage_times(workdir / "results/benchmarks")
    kept = json.loads((workdir / "results/demos/validation.json").read_text())["n_kept"]
    for name, figures in stages.items():
        figures["rows_per_second"] = (rows if name in SEE_EVERY_ROW else kept) / figures["seconds"]
    ceiling = tokenizer_ceiling(workdir)
    return {"rows": rows, "shards": shards, "kept": kept, "wall_seconds": wall, "stages": stages, "ceiling": ceiling}


def build(rows: int, workdir: Path, shards: int | None = None) -> float:
    """`snakemake results/data/split.json -c2` on `rows` program-expert rows in `workdir` (brought up to date when
    it holds a run already); its wall seconds."""
    overlay = workdir / "scale.yaml"
    settings = {"task": {"n_problems": rows, "arithmetic": {"max_ops": 4, "max_operand": 99}}}
    if shards:
        settings.update(collect={"shards": shards}, convert={"shards": shards})
    overlay.write_text(yaml.safe_dump(settings))
    cmd = [str(ROOT / ".venv/bin/snakemake"), "-s", str(ROOT / "Snakefile"), "results/data/split.json", "-c2"]
    cmd += ["--configfile", str(ROOT / "config/config.yaml"), str(overlay)]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def render(record: dict) -> str:
    lines = [
        "| rows | " + " | ".join(f"{s} s (rows/s, peak MB)" for s in STAGES) + " | DAG wall s |",
        "|---" * (len(STAGES) + 2) + "|",
    ]
    for size in record["sizes"]:
        cells = []
        for stage in STAGES:
            f = size["stages"].get(stage)  # none: a record from before the stage existed
            if not f:
                cells.append("–")
                continue
            longest = f" [{f['jobs']} jobs, longest {f['longest_shard_seconds']:.1f}]" if f.get("jobs", 1) > 1 else ""
            cells.append(f"{f['seconds']:.1f}{longest} ({f['rows_per_second']:,.0f}, {f['max_rss_mb']:,.0f})")
        lines.append(f"| {size['rows']:,} | " + " | ".join(cells) + f" | {size['wall_seconds']:.0f} |")
        if size.get("shards"):  # the data stages are a chain: on a node per shard, the longest shards add up
            longest = sum(f["longest_shard_seconds"] for f in size["stages"].values())
            lines.append(f"| longest shards added up | {longest:.0f} s: the chain's wall with a node per shard |")
    ceilings = [ceiling_line(size) for size in record["sizes"] if size.get("ceiling")]
    if ceilings:
        lines += ["", "convert against the tokenizer's own batch calls on its conversations (the faster of "
                  "`encode_batch` and `encode_batch_fast`, ids taken, rendering not timed), and on its conversations "
                  "and prompts, both of which convert tokenized before e68e15f (since, it finds a prompt's ids in its "
                  "conversation's):", "", *ceilings]  # fmt: skip
    lines += ["", f"Measured on {record['machine']}, commit {record['commit']}."]
    return "\n".join(lines)


def ceiling_line(size: dict) -> str:
    """`- 1,000,000 rows: ...`: the tokenizer's rows/s, and convert's time (its jobs summed) per row against it."""
    convert = sum(size["stages"][stage]["seconds"] for stage in ("convert_shard", "convert") if stage in size["stages"])
    per_row = convert / size["kept"]
    one, every = (size["ceiling"][name] for name in ("one_thread", "all_cores"))
    line = (
        f"- {size['rows']:,} rows: the tokenizer {one['rows_per_second']:,.0f} rows/s on one thread, "
        f"{every['rows_per_second']:,.0f} on every core; convert's jobs {size['kept'] / convert:,.0f} rows/s, "
        f"{per_row * one['rows_per_second']:.2f}× the one-thread time, **{per_row * every['rows_per_second']:.2f}×** "
        "the every-core time"
    )
    if "with_prompts_rows_per_second" in every:  # records from before the prompts were timed have none
        line += f"; with the prompts {every['with_prompts_rows_per_second']:,.0f} rows/s on every core: "
        line += f"**{per_row * every['with_prompts_rows_per_second']:.2f}×**"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--shards", type=int, help="collect.shards and convert.shards (default: the config's)")
    parser.add_argument("--save", action="store_true", help="keep the figures and rewrite the README table")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    record = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "commit": commit.stdout.strip(),
        "sizes": [],
    }
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix=f"data-stages-{rows}-") as tmp:
            record["sizes"].append(run(rows, Path(tmp), args.shards))
        print(render(record), flush=True)
    if args.save and args.shards:
        SAVED_SHARDED.write_text(json.dumps(record, indent=1) + "\n")
        replace_table(TABLE_SHARDED[0], render(record), TABLE_SHARDED[1])
        print(f"saved to {SAVED_SHARDED.relative_to(ROOT)} and the README's {TABLE_SHARDED[0]}")
    elif args.save:
        SAVED.parent.mkdir(parents=True, exist_ok=True)
        SAVED.write_text(json.dumps(record, indent=1) + "\n")
        replace_table(TABLE[0], render(record), TABLE[1])
        print(f"saved to {SAVED.relative_to(ROOT)} and the README's {TABLE[0]}")


if __name__ == "__main__":
    sys.exit(main())
