"""Curriculum SFT vs uniform SFT on the same data, steps and seed: test accuracy and the checks' cost.

    .venv/bin/python benchmarks/curriculum.py                     # both runs, then the table
    .venv/bin/python benchmarks/curriculum.py --report --save     # only read finished runs; save the figures
    .venv/bin/python benchmarks/curriculum.py --name static --configfile benchmarks/results/curriculum/static.yaml
    .venv/bin/python benchmarks/curriculum.py --gsm8k                 # the GSM8K import with the scratch model

The uniform run builds the default DAG up to SFT's test evaluation (`results/eval/sft.parquet`) in
benchmarks/runs/curriculum/uniform/; the curriculum run is a copy of it with `--configfile` overlays (default
config/examples/curriculum.yaml) in benchmarks/runs/curriculum/<name>/, so only SFT and its evaluation rerun.
The table: test accuracy overall and per difficulty of each run, curriculum − uniform with its paired-bootstrap
95% CI over the same test items, SFT's training seconds, and the checks' evaluation seconds as a share of the
curriculum run's SFT time. `--save` writes benchmarks/results/curriculum/<name>.json (the table: `--report`).
`--gsm8k` runs both on the GSM8K train file imported with the scratch model (overlay
benchmarks/results/curriculum/gsm8k-scratch.yaml, data/gsm8k linked to ../shared/datasets/gsm8k) in <out>/gsm8k/,
with gsm8k-curriculum.yaml as the curriculum.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TARGET = "results/eval/sft.parquet"
SAVED = ROOT / "benchmarks/results/curriculum"
GSM8K = ROOT.parent / "shared" / "datasets" / "gsm8k"
TABLE = ("curriculum-table", "benchmarks/curriculum.py --readme")  # the README table's marker name and command


def build(workdir: Path, configfiles: list[str], seed: int) -> float:
    """Run the DAG up to SFT's test evaluation in `workdir`; returns the wall seconds."""
    extra = ["--configfile", *configfiles] if configfiles else []
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-c2", TARGET, *extra, "--config", f"seed={seed}"]
    start = time.perf_counter()
    with open(workdir / "snakemake.log", "a") as log:
        subprocess.run(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def compare(out: Path, name: str, configfiles: list[str], seed: int, n_samples: int) -> dict:
    from sftdpo.io import read_parquet
    from sftdpo.report import paired_bootstrap

    runs = {"uniform": out / "uniform", "curriculum": out / name}
    evals = {name: read_parquet(path / TARGET).set_index("id").sort_index() for name, path in runs.items()}
    uniform, curriculum = evals["uniform"], evals["curriculum"]
    assert uniform.index.equals(curriculum.index), "the two runs were evaluated on different test items"
    groups = {"all": uniform.index, **{str(d): rows.index for d, rows in uniform.groupby("difficulty")}}
    rows = []
    for group, ids in groups.items():
        a, b = curriculum.loc[ids, "correct"].to_numpy(), uniform.loc[ids, "correct"].to_numpy()
        delta = paired_bootstrap(a.astype(float), b.astype(float), n_samples=n_samples, seed=0)
        rows.append({"difficulty": group, "n": len(ids), "uniform": float(b.mean()), "curriculum": float(a.mean()),
                     "delta": delta["mean"], "ci95": delta["ci95"]})  # fmt: skip
    metrics = {name: json.loads((path / "results/sft/metrics.json").read_text()) for name, path in runs.items()}
    schedule = json.loads((runs["curriculum"] / "results/sft/curriculum.json").read_text())
    return {
        "name": name,
        "seed": seed,
        "configfiles": configfiles,
        "rows": rows,
        "train_seconds": {name: m["train_seconds_this_run"] for name, m in metrics.items()},
        "steps": {name: m["global_step"] for name, m in metrics.items()},
        "curriculum": {k: v for k, v in schedule.items() if k not in ("sampler", "config")},
    }


def render(result: dict) -> str:
    lines = [
        "| difficulty | test items | uniform | curriculum | curriculum − uniform (95% CI) |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ci = f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
        lines.append(f"| {r['difficulty']} | {r['n']} | {r['uniform']:.3f} | {r['curriculum']:.3f} | "
                     f"{r['delta']:+.3f} {ci} |")  # fmt: skip
    c, seconds = result["curriculum"], result["train_seconds"]
    events = ", ".join(f"{e['step']} {e['action']}→{e['stage']} ({e['performance']:.3f})" for e in c["events"])
    lines += [
        "",
        f"SFT {result['steps']['uniform']} steps each, seed {result.get('seed', 0)}. "
        f"SFT time: uniform {seconds['uniform']:.0f} s, "
        f"curriculum {seconds['curriculum']:.0f} s, of which the checks' evaluation {c['eval_seconds']:.0f} s "
        f"({c['eval_share_of_train_time']:.1%}). Curriculum: final stage {c['final_stage']}, {c['rollbacks']} "
        f"rollbacks, samples per difficulty {c['samples_per_difficulty']}; checks (step, action, val accuracy): "
        f"{events}.",
    ]
    return "\n".join(lines)


def saved_results() -> list[dict]:
    """Every saved comparison, default-task runs first (by curriculum, then seed), GSM8K last."""
    results = [json.loads(path.read_text()) for path in SAVED.glob("*.json")]
    return sorted(results, key=lambda r: (bool(r.get("base_configfiles")), r["name"], r.get("seed", 0)))


def readme_table(results: list[dict]) -> str:
    """The README's table: one row per saved comparison (curriculum, data, seed)."""
    lines = [
        "| curriculum | data | seed | test items | uniform | curriculum | curriculum − uniform (95% CI) "
        "| by difficulty (items): curriculum − uniform | rollbacks, final stage | checks' share of SFT time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        overall, *groups = r["rows"]
        ci = f"[{overall['ci95'][0]:+.3f}, {overall['ci95'][1]:+.3f}]"
        by_difficulty = " / ".join(f"{g['difficulty']} ({g['n']}): {g['delta']:+.3f}" for g in groups)
        c = r["curriculum"]
        data = "GSM8K import, scratch model" if r.get("base_configfiles") else "default (arithmetic)"
        lines.append(
            f"| `{r['configfiles'][0]}` | {data} | {r.get('seed', 0)} | {overall['n']} | {overall['uniform']:.3f} "
            f"| {overall['curriculum']:.3f} | {overall['delta']:+.3f} {ci} | {by_difficulty} "
            f"| {c['rollbacks']}, {c['final_stage']} | {c['eval_share_of_train_time']:.1%} "
            f"({c['eval_seconds']:.0f} s of {r['train_seconds']['curriculum']:.0f} s) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/runs/curriculum")
    parser.add_argument("--configfile", nargs="*", default=["config/examples/curriculum.yaml"],
                        help="overlays of the curriculum run (paths relative to the repository)")  # fmt: skip
    parser.add_argument("--name", default="example", help="the curriculum run's directory and saved figures")
    parser.add_argument("--report", action="store_true", help="only read finished runs")
    parser.add_argument("--save", action="store_true", help=f"write {SAVED.relative_to(ROOT)}/<name>.json")
    parser.add_argument("--readme", action="store_true", help="only write the README table from the saved figures")
    parser.add_argument("--bootstrap-samples", type=int, default=10_000)
    parser.add_argument("--gsm8k", action="store_true", help="both runs on the GSM8K import (scratch model)")
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed; another seed runs in <out>/seed-<seed>/")
    args = parser.parse_args()
    if args.readme:
        from readme_table import replace_table

        replace_table(TABLE[0], readme_table(saved_results()), TABLE[1])
        return
    base: list[str] = []  # overlays of both runs
    if args.gsm8k:
        args.out, args.name = args.out / "gsm8k", "gsm8k" if args.name == "example" else args.name
        base = [str(SAVED / "gsm8k-scratch.yaml")]
        if args.configfile == parser.get_default("configfile"):
            args.configfile = [str((SAVED / "gsm8k-curriculum.yaml").relative_to(ROOT))]
    if args.seed:
        args.out = args.out / f"seed-{args.seed}"
    overlays = base + [str(ROOT / c) for c in args.configfile]
    if not args.report:
        uniform = args.out / "uniform"
        uniform.mkdir(parents=True, exist_ok=True)
        if args.gsm8k and not (uniform / "data" / "gsm8k").exists():
            (uniform / "data").mkdir(exist_ok=True)
            (uniform / "data" / "gsm8k").symlink_to(GSM8K)
        print(f"uniform: {build(uniform, base, args.seed):.0f} s", flush=True)
        curriculum = args.out / args.name
        if not curriculum.exists():  # the same data and base model: only SFT and its evaluation rerun
            shutil.copytree(uniform, curriculum, symlinks=True)
        print(f"curriculum: {build(curriculum, overlays, args.seed):.0f} s", flush=True)
    result = compare(args.out, args.name, args.configfile, args.seed, args.bootstrap_samples)
    print(render(result))
    if args.save:
        SAVED.mkdir(parents=True, exist_ok=True)
        saved = f"{args.name}-seed{args.seed}" if args.seed else args.name
        result["base_configfiles"] = [str(Path(c).relative_to(ROOT)) for c in base]
        (SAVED / f"{saved}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
