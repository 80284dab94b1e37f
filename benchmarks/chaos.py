"""Kill it anywhere: SIGKILL the whole DAG at random moments, recover as documented, compare with a clean run.

    .venv/bin/python benchmarks/chaos.py --kills 20 --seed 0            # tiny config, results in benchmarks/chaos/
    .venv/bin/python benchmarks/chaos.py --kills 5 --seed 1 --reference benchmarks/chaos/reference

1. A reference run: `snakemake -c2 --configfile tests/config/tiny.yaml` in <out>/reference (its wall time W), unless
   `--reference` names a finished one.
2. The campaign, in <out>/campaign-seed<S>: N moments are drawn from the seed over the reference run's busy time,
   one inside each rule's jobs first, the rest uniformly, each named by the job it hit and how many seconds into
   it (a resumed run skips finished work, so a wall time would not mean the same thing twice). For each moment, in
   order, the same command starts in its own process group and the whole group gets SIGKILL once that job has run
   that long (merges, HDF5 writes, checkpoint saves, the report; a job's first second is where Snakemake writes its
   metadata). Recovery is what the README documents: `snakemake --unlock`, then the same command again. After the
   N kills the command runs to the end.
3. The verdict, against the reference: every table and tokens.h5 with the same content (sftdpo.io.content_digest:
   data tables, rollouts, pairs and the evaluation rows); no id twice in any table keyed by id; SFT's and DPO's
   global_step at max_steps with the same loss history (no optimizer step applied twice or lost); the same set of
   files under results/ (no stray temporary or half file).

Prints one row per kill (when, the jobs running, what recovery did) and the verdict; `--save` writes them to
benchmarks/results/chaos.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from readme_table import add_save_options, replace_table, rewrite_from_saved  # noqa: E402

from sftdpo.io import content_digest, read_json, read_parquet  # noqa: E402

SNAKEMAKE = str(ROOT / ".venv/bin/snakemake")
SAVED = ROOT / "benchmarks/results/chaos.json"
TABLE = ("chaos-table", "benchmarks/chaos.py --save")  # the README table's marker name and command
# Tables whose rows are one id each (rollouts and pairs have k samples / several pairs a prompt).
KEYED_BY_ID = ["demos/validated.parquet", "data/chat.parquet", "data/train.parquet", "data/val.parquet",
               "data/test.parquet", "eval/base.parquet", "eval/sft.parquet", "eval/dpo.parquet"]  # fmt: skip
SCRIPT = re.compile(r"\.snakemake/scripts/tmp\w+\.(\w+)\.py")


def command(config: Path) -> list[str]:
    return [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-c2", "--configfile", str(config)]


def run_to_end(workdir: Path, config: Path, timeline: list | None = None) -> float:
    """Run the command to the end; with `timeline`, append (seconds since start, running rules) every 0.2 s."""
    start = time.perf_counter()
    proc = subprocess.Popen(command(config), cwd=workdir, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    while proc.poll() is None:
        if timeline is not None:
            timeline.append((time.perf_counter() - start, running_jobs(proc.pid)))
        time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command(config))} failed in {workdir}:\n{proc.stderr.read()[-3000:]}")
    return time.perf_counter() - start


def kill_moments(timeline: list[tuple[float, list[str]]], n: int, seed: int) -> list[tuple[str, float, set[str]]]:
    """n (rule, seconds into that rule's job, rules that start later) moments, in the order they happened: one
    inside each rule's busy time first (so every stage is hit, however short: a merge, the report), then the rest
    uniformly over all busy time. A moment is named by the job it hits, not by a wall time: a resumed run skips
    what was done, so only the job and how far into it are comparable."""
    rng = random.Random(seed)
    busy, stretch_start, first_seen, previous = [], {}, {}, set()
    for t, jobs in timeline:
        for job in set(jobs) - previous:  # a job of this rule (re)appeared: its time counts from here
            stretch_start[job] = t
            first_seen.setdefault(job, t)
        previous = set(jobs)
        busy += [(t, job, round(t - stretch_start[job], 1)) for job in sorted(set(jobs))]
    rules = sorted(first_seen)
    chosen = [rng.choice([m for m in busy if m[1] == rule]) for rule in rng.sample(rules, min(n, len(rules)))]
    chosen += rng.sample([m for m in busy if m not in chosen], min(n - len(chosen), len(busy) - len(chosen)))
    return [(job, offset, {r for r, t0 in first_seen.items() if t0 > t}) for t, job, offset in sorted(chosen)]


def running_jobs(pgid: int) -> list[str]:
    """The rules whose scripts run in the process group (the jobs a kill hits), from the process table."""
    ps = subprocess.run(["ps", "-eo", "pgid=,args="], capture_output=True, text=True).stdout
    return sorted(SCRIPT.search(line).group(1) for line in ps.splitlines()
                  if line.split(None, 1)[0] == str(pgid) and SCRIPT.search(line))  # fmt: skip


def kill_once(workdir: Path, config: Path, rule: str, offset: float, later: set[str], timeout: float) -> dict:
    """Start the run and SIGKILL its process group once `rule`'s job has run `offset` s, then `--unlock`. A resumed
    job can be shorter than the offset and the run can be past the rule already: then the kill comes as soon as
    the rule's job ends or a rule that starts later in the reference runs (whatever runs then is hit)."""
    proc = subprocess.Popen(command(config), cwd=workdir, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    started, since, seen = time.monotonic(), None, False
    while proc.poll() is None and time.monotonic() - started < timeout:
        jobs = running_jobs(proc.pid)
        since = (since or time.monotonic()) if rule in jobs else None
        seen = seen or rule in jobs
        on_time = since is not None and time.monotonic() - since >= offset
        if on_time or (jobs and (seen and rule not in jobs or set(jobs) & later)):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            unlock = subprocess.run([*command(config), "--unlock"], cwd=workdir, capture_output=True, text=True)
            return {"rule": rule, "offset": offset, "jobs": jobs, "after": round(time.monotonic() - started, 1),
                    "recovery": "--unlock, rerun" if unlock.returncode == 0 else "--unlock failed"}  # fmt: skip
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return {"rule": rule, "offset": offset, "jobs": [], "after": round(time.monotonic() - started, 1),
            "recovery": f"not hit: the run {'ended' if proc.returncode == 0 else 'timed out'} first"}  # fmt: skip


def files(results: Path) -> set[str]:
    return {str(p.relative_to(results)) for p in results.rglob("*") if p.is_file() and "benchmarks" not in p.parts}


def verdict(reference: Path, campaign: Path) -> dict[str, list[str]]:
    """Problems found, by check (empty lists: the check holds)."""
    ref, got = reference / "results", campaign / "results"
    out: dict[str, list[str]] = {"files": [], "content": [], "duplicate ids": [], "training": []}
    missing, stray = files(ref) - files(got), files(got) - files(ref)
    out["files"] = [f"missing {m}" for m in sorted(missing)] + [f"stray {s}" for s in sorted(stray)]
    for name in sorted(files(ref) & files(got)):
        if name.endswith((".parquet", ".h5")) and content_digest(ref / name) != content_digest(got / name):
            out["content"].append(name)
    for name in KEYED_BY_ID:
        ids = read_parquet(got / name)["id"]
        if ids.duplicated().any():
            out["duplicate ids"].append(f"{name}: {ids[ids.duplicated()].tolist()[:3]}")
    for stage in ("sft", "dpo"):
        a, b = read_json(ref / stage / "metrics.json"), read_json(got / stage / "metrics.json")
        losses = [[(h["step"], h.get("loss")) for h in m["log_history"] if "loss" in h] for m in (a, b)]
        if a["global_step"] != b["global_step"]:
            out["training"].append(f"{stage}: global_step {b['global_step']} != {a['global_step']}")
        if losses[0] != losses[1]:
            out["training"].append(f"{stage}: loss history differs ({len(losses[1])} vs {len(losses[0])} entries)")
    return out


def render(record: dict) -> str:
    """The README's table of a saved campaign."""
    lines = ["| kill | job hit, s into it | jobs running | recovery |", "|---|---|---|---|"]
    for i, row in enumerate(record["kills"], 1):
        lines.append(f"| {i} | {row['rule']}, {row['offset']} | {', '.join(row['jobs']) or '-'} | {row['recovery']} |")
    checks = "; ".join(f"{check}: {'ok' if not problems else ', '.join(problems)}"
                       for check, problems in record["verdict"].items())  # fmt: skip
    lines += ["", f"Verdict after {len(record['kills'])} kills (seed {record['seed']}, config {record['config']}, "
              f"reference run {record['reference_wall']:.0f} s): "
              f"**{'recovered identical' if record['identical'] else 'DIFFERENT'}** ({checks})."]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=ROOT / "tests/config/tiny.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/chaos")
    parser.add_argument("--reference", type=Path, help="a finished run of the same config (skips step 1)")
    add_save_options(parser)
    args = parser.parse_args()
    if args.readme:
        rewrite_from_saved(TABLE, render, SAVED)
        return 0
    config = args.config.resolve()
    reference = args.reference or args.out / "reference"
    timeline_path = reference / "timeline.json"
    if not args.reference:
        if reference.exists():
            shutil.rmtree(reference)
        reference.mkdir(parents=True)
        timeline: list = []
        wall = run_to_end(reference, config, timeline)
        timeline_path.write_text(json.dumps({"wall": wall, "timeline": timeline}))
        print(f"reference run: {wall:.0f} s", flush=True)
    recorded = json.loads(timeline_path.read_text())
    campaign = args.out / f"campaign-seed{args.seed}"
    if campaign.exists():
        shutil.rmtree(campaign)
    campaign.mkdir(parents=True)
    rows = []
    print("| kill | job hit, s into it | jobs running | run started s before | recovery |\n|---|---|---|---|---|")
    for i, (rule, offset, later) in enumerate(kill_moments(recorded["timeline"], args.kills, args.seed)):
        row = kill_once(campaign, config, rule, offset, later, timeout=2 * recorded["wall"])
        rows.append(row)
        print(f"| {i + 1} | {rule}, {offset} | {', '.join(row['jobs']) or '-'} | {row['after']} | {row['recovery']} |",
              flush=True)  # fmt: skip
    final = run_to_end(campaign, config)
    found = verdict(reference, campaign)
    ok = not any(found.values())
    print(f"\nfinal run to the end: {final:.0f} s")
    for check, problems in found.items():
        print(f"- {check}: {'ok' if not problems else '; '.join(problems)}")
    print(f"verdict: {'recovered identical' if ok else 'DIFFERENT'} ({args.kills} kills, seed {args.seed})")
    if args.save:
        SAVED.parent.mkdir(parents=True, exist_ok=True)
        where = str(config.relative_to(ROOT)) if ROOT in config.parents else str(config)
        record = {"seed": args.seed, "config": where, "reference_wall": recorded["wall"], "kills": rows,
                  "verdict": found, "identical": ok}  # fmt: skip
        SAVED.write_text(json.dumps(record, indent=1) + "\n")
        replace_table(TABLE[0], render(record), TABLE[1])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
