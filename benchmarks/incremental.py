"""Incremental and resumable runs, measured on the default config (issue 4).

    .venv/bin/python benchmarks/incremental.py [--configfile extra.yaml] [--workdir DIR]

Prints a markdown table:
- full run, then the rerun after a `dpo.beta` change (goal <= 0.3x the full run);
- a no-op `snakemake` when everything is up to date (goal <= 3 s);
- a run killed (SIGKILL to the process group) right after SFT's second checkpoint, then resumed,
  against the uninterrupted full run (goal <= 1.2x).
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake(workdir: Path, *args: str) -> float:
    started = time.time()
    subprocess.run(
        [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-c2", *args],
        cwd=workdir,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.time() - started


def killed_and_resumed(workdir: Path, extra: list[str], checkpoint: str) -> tuple[float, float]:
    started = time.time()
    proc = subprocess.Popen(
        [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-c2", *extra],
        cwd=workdir,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not list((workdir / "work/sft").glob(f"*/{checkpoint}/trainer_state.json")):
        if proc.poll() is not None:
            sys.exit("the run ended before the SFT checkpoint appeared")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    until_kill = time.time() - started
    snakemake(workdir, "--unlock")
    return until_kill, snakemake(workdir, "--rerun-incomplete", *extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", action="append", default=[])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--checkpoint", default="checkpoint-200", help="kill once SFT wrote this checkpoint")
    args = parser.parse_args()
    extra = ["--configfile", *args.configfile] if args.configfile else []
    root = Path(args.workdir or tempfile.mkdtemp(prefix="sftdpo-bench-"))
    full_dir, killed_dir = root / "full", root / "killed"
    full_dir.mkdir(parents=True)
    killed_dir.mkdir(parents=True)

    full = snakemake(full_dir, *extra)
    noop = snakemake(full_dir, *extra)
    (full_dir / "beta.yaml").write_text("dpo:\n  beta: 0.2\n")
    beta = snakemake(full_dir, "--configfile", *args.configfile, "beta.yaml")
    until_kill, resumed = killed_and_resumed(killed_dir, extra, args.checkpoint)

    print("| measurement | wall s | ratio | goal |\n|---|---|---|---|")
    print(f"| full run | {full:.1f} | 1.00 | |")
    print(f"| rerun after `dpo.beta` change | {beta:.1f} | {beta / full:.2f} | <= 0.3 |")
    print(f"| no-op run (everything up to date) | {noop:.1f} | | <= 3 s |")
    print(
        f"| killed after SFT {args.checkpoint} ({until_kill:.1f} s) + resumed ({resumed:.1f} s) | "
        f"{until_kill + resumed:.1f} | {(until_kill + resumed) / full:.2f} | <= 1.2 |"
    )
    print(f"\nwork directories: {root}")


if __name__ == "__main__":
    main()
