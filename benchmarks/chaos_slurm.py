"""Kill it on Slurm: preemption, node failure and a killed Snakemake on the test cluster, recovered as documented.

    .venv/bin/python benchmarks/chaos_slurm.py --save        # as root; results in benchmarks/chaos_slurm/
    .venv/bin/python benchmarks/chaos_slurm.py --reference <finished Slurm run> --local <finished local run>

1. tests/slurm/start-cluster.sh (the one-node test cluster of tests/test_slurm.py), then a reference run of the
   command of tests/test_slurm.py, `snakemake --profile slurm --profile tests/slurm/overlay.yaml --configfile
   tests/config/tiny.yaml`, in a fresh copy of the project (tests/doc_commands.py copy_project), unless
   `--reference` names a finished one; beside it a local run (`snakemake -c2`) of the same config, unless `--local`
   names a finished one, is compared with it: computation is seeded and thread counts come from the config, so
   the two should be identical.
2. Three scenarios, each in a fresh copy, each hitting a job found in `squeue` by the comment the Slurm plugin
   gives it (rule_<rule>[_wildcards_<wildcards>]) among the jobs named by the run's SLURM run ID:
   - preemption: `scancel` the running sft job once it saved a checkpoint (what a preempting scheduler does);
   - node failure: kill -9 slurmd while sft runs, leave it down DOWN_SECONDS, restart it with
     tests/slurm/start-cluster.sh;
   - login-side kill: SIGKILL to Snakemake's whole process group while rollout jobs run in Slurm.
   Then the recovery the README documents ("Timeouts, preemption, interruptions"): nothing when Snakemake finished
   by itself (its retries); after a kill, `scancel --name <SLURM run ID>`, `snakemake --unlock`, and the same
   command again; after a failed run, the same command again.
3. The verdict of benchmarks/chaos.py against the reference (content of every table and tokens.h5, no id twice,
   SFT's and DPO's global_step and loss history, the same files under results/).

Prints one row per scenario (job hit and when, what Slurm reported, what recovery did, the verdict); `--save` writes
them to benchmarks/results/chaos_slurm.json and rewrites the README table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Slurm test's command, environment and sacct reader

from chaos import verdict  # noqa: E402
from conftest import user_env  # noqa: E402
from doc_commands import copy_project  # noqa: E402
from readme_table import add_save_options, replace_table, rewrite_from_saved  # noqa: E402
from test_slurm import CLUSTER_ENV, COMMAND, SLURM_TESTS  # noqa: E402

SAVED = ROOT / "benchmarks/results/chaos_slurm.json"
TABLE = ("chaos-slurm-table", "benchmarks/chaos_slurm.py --save")  # the README table's marker name and command
DOWN_SECONDS = 30  # slurmd stays dead this long (Slurm's SlurmdTimeout, 300 s, would mark the node DOWN)
TIMEOUT = 1200  # one run of the tiny DAG through Slurm, ~4-8 min here


class Snakemake:
    """COMMAND in a project copy, in its own process group, its output in <copy>.<name>.out."""

    def __init__(self, workdir: Path, name: str, *args: str):
        self.workdir, self.started = workdir, dt.datetime.now() - dt.timedelta(seconds=5)
        self.log = workdir.parent / f"{workdir.name}.{name}.out"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([*COMMAND, *args], cwd=workdir, env=user_env(CLUSTER_ENV, workdir),
                                         start_new_session=True, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        self.t0 = time.monotonic()

    def run_ids(self) -> list[str]:
        return re.findall(r"SLURM run ID: (\S+)", self.log.read_text())

    def queued(self) -> list[dict]:
        """The run's jobs in squeue: id, rule, state and seconds run."""
        ids = self.run_ids()
        if not ids:
            return []
        out = subprocess.run(["squeue", "-h", "-n", ",".join(ids), "-o", "%A|%k|%T|%M"],
                             capture_output=True, text=True).stdout  # fmt: skip
        jobs = []
        for line in out.splitlines():
            jobid, comment, state, used = line.split("|")
            rule = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", comment)
            jobs.append({"id": int(jobid), "rule": rule.group(1) if rule else comment, "state": state,
                         "seconds": seconds(used)})  # fmt: skip
        return jobs

    def wait_for(self, rule: str, ready) -> dict:
        """The first RUNNING job of `rule` for which ready(job) holds (polled every 0.5 s)."""
        while self.proc.poll() is None and time.monotonic() - self.t0 < TIMEOUT:
            for job in self.queued():
                if job["rule"] == rule and job["state"] == "RUNNING" and ready(job):
                    return job
            time.sleep(0.5)
        raise SystemExit(f"{rule} never ran as required in {self.workdir} (see {self.log})")

    def wait(self) -> int:
        """Snakemake's exit code; SIGKILL to its group after TIMEOUT (then -9)."""
        try:
            return self.proc.wait(timeout=max(1, TIMEOUT - (time.monotonic() - self.t0)))
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def slurm(self, rule: str | None = None) -> list[str]:
        """What sacct reports about the run's jobs (of `rule`): "<job id> <STATE>"."""
        ids = self.run_ids()
        if not ids:
            return []
        out = subprocess.run(["sacct", "-X", "-P", "-n", "--name", ",".join(ids), "-o", "JobID,State,Comment"],
                             capture_output=True, text=True).stdout  # fmt: skip
        rows = [line.split("|", 2) for line in out.splitlines()]
        # A job cancelled before it started has no comment in sacct (the plugin's rule_<rule>[_wildcards_...]).
        return [f"{jobid} {state.split()[0]}" for jobid, state, comment in rows
                if rule is None or re.fullmatch(rf"rule_{rule}(_wildcards_.*)?", comment)]  # fmt: skip

    def cancel(self) -> None:
        for run_id in self.run_ids():
            subprocess.run(["scancel", "--name", run_id], capture_output=True)


def local_snakemake(workdir: Path) -> subprocess.Popen:
    """`snakemake -c2 --configfile tests/config/tiny.yaml` in a project copy, without Slurm."""
    with open(workdir.parent / f"{workdir.name}.run.out", "w") as out:
        return subprocess.Popen([".venv/bin/snakemake", "-c2", "--configfile", "tests/config/tiny.yaml"], cwd=workdir,
                                env=user_env({}, workdir), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def listed(jobs: list[dict]) -> str:
    return ", ".join(f"{job['rule']} {job['state']}" for job in jobs)


def seconds(used: str) -> int:
    """squeue's %M ([days-][hours:]minutes:seconds) in seconds."""
    days, _, clock = used.rpartition("-")
    total = 0
    for part in clock.split(":"):
        total = 60 * total + int(part)
    return total + 86400 * int(days or 0)


def start_cluster(health_check: bool = True) -> None:
    env = {**os.environ, "HEALTH_CHECK": "1" if health_check else "0"}
    proc = subprocess.run(["bash", str(SLURM_TESTS / "start-cluster.sh")], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"tests/slurm/start-cluster.sh failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def node_state() -> str:
    return subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout.split()[0]


def slurmd_pid() -> int:
    """slurmd's pid from its pid file, checked against /proc as tests/slurm/daemons.sh does."""
    pid = int(Path("/run/slurmd.pid").read_text())
    if Path(f"/proc/{pid}/comm").read_text().strip() != "slurmd":
        raise SystemExit(f"/run/slurmd.pid names {pid}, which is not slurmd")
    return pid


def checkpoint_saved(workdir: Path, stage: str) -> str | None:
    """The first complete checkpoint of `stage` under work/ (one with trainer_state.json), if any."""
    done = sorted(workdir.glob(f"work/{stage}/*/checkpoint-*/trainer_state.json"))
    return done[0].parent.name if done else None


def preemption(workdir: Path) -> tuple[Snakemake, dict]:
    run = Snakemake(workdir, "hit")
    job = run.wait_for("sft", lambda job: checkpoint_saved(workdir, "sft"))
    subprocess.run(["scancel", str(job["id"])], check=True)
    return run, {"rule": "sft", "job": job["id"], "at": job["seconds"],
                 "action": f"scancel {job['id']} after {checkpoint_saved(workdir, 'sft')}"}  # fmt: skip


def node_failure(workdir: Path) -> tuple[Snakemake, dict]:
    run = Snakemake(workdir, "hit")
    job = run.wait_for("sft", lambda job: job["seconds"] >= 20)
    os.kill(slurmd_pid(), signal.SIGKILL)
    time.sleep(DOWN_SECONDS)
    down = {j["id"]: j["state"] for j in run.queued()}
    state = node_state()
    start_cluster(health_check=False)
    return run, {"rule": "sft", "job": job["id"], "at": job["seconds"],
                 "action": f"kill -9 slurmd, {DOWN_SECONDS} s down (node {state}, jobs {down}), "
                           f"start-cluster.sh (node {node_state()})"}  # fmt: skip


def login_kill(workdir: Path) -> tuple[Snakemake, dict]:
    run = Snakemake(workdir, "hit")
    job = run.wait_for("rollouts", lambda job: job["seconds"] >= 5)
    in_slurm = run.queued()
    run.kill()
    time.sleep(2)
    left = run.queued()
    return run, {"rule": "rollouts", "job": job["id"], "at": job["seconds"],
                 "action": f"SIGKILL to Snakemake's process group ({len(in_slurm)} jobs in Slurm: "
                           f"{listed(in_slurm)}; "
                           f"{len(left)} still there after the kill)"}  # fmt: skip


SCENARIOS = {"preemption": preemption, "node failure": node_failure, "login-side kill": login_kill}


def recover(workdir: Path, hit: Snakemake, returncode: int) -> list[str]:
    """The README's recovery after `hit` ended with `returncode`; returns the steps taken."""
    if returncode == 0:
        return ["none: Snakemake finished the DAG itself"]
    steps = []
    if returncode == -signal.SIGKILL:
        left = hit.queued()
        hit.cancel()
        locked = any((workdir / ".snakemake/locks").glob("*"))  # the killed run's lock on the directory
        unlock = subprocess.run([*COMMAND, "--unlock"], cwd=workdir, env=user_env(CLUSTER_ENV, workdir),
                                capture_output=True, text=True)  # fmt: skip
        steps += [f"scancel --name <SLURM run ID> ({listed(left) or 'no job'})",
                  f"--unlock ({'its lock was left' if locked else 'no lock left'})" if unlock.returncode == 0
                  else f"--unlock failed: {unlock.stderr[-300:]}"]  # fmt: skip
    else:
        steps.append(f"Snakemake exited {returncode}")
    again = Snakemake(workdir, "recovery")
    code = again.wait()
    again.cancel()
    steps.append(f"same command: exit {code} ({', '.join(again.slurm()) or 'no job'})")
    if code != 0:
        raise SystemExit(f"the documented recovery failed in {workdir}: see {again.log}")
    return steps


def scenario(name: str, out: Path, reference: Path) -> dict:
    workdir = copy_project(out / name.replace(" ", "-"))
    hit, row = SCENARIOS[name](workdir)
    code = hit.wait()
    hit.cancel()
    row["slurm"] = hit.slurm(row["rule"])
    row["exit"] = code
    row["recovery"] = recover(workdir, hit, code)
    metrics = json.loads((workdir / "results/sft/metrics.json").read_text())
    row["sft resumed from"] = metrics.get("resumed_from")
    row["verdict"] = verdict(reference, workdir)
    row["identical"] = not any(row["verdict"].values())
    return {"scenario": name, **row}


def render(record: dict) -> str:
    """The README's table of a saved campaign."""
    lines = ["| scenario | job hit, s into it | what was done | what Slurm reported (sacct) | recovery | verdict |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in record["scenarios"]:
        checks = "; ".join(f"{c}: {', '.join(p)}" for c, p in row["verdict"].items() if p)
        lines.append(f"| {row['scenario']} | {row['rule']} (job {row['job']}), {row['at']} | {row['action']} | "
                     f"{', '.join(row['slurm'])} | {'; '.join(row['recovery'])} | "
                     f"{'identical' if row['identical'] else 'DIFFERENT: ' + checks} |")  # fmt: skip
    local = record["local_vs_slurm"]
    same = "not compared" if local is None else "identical" if not any(local.values()) else f"DIFFERENT ({local})"
    lines += ["", f"Reference: the same command run to the end on the cluster ({record['reference_wall']:.0f} s, "
              f"config {record['config']}); against a local `snakemake -c2` run of that config: {same}. "
              f"Measured on {record['machine']} at commit {record['commit']}."]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    global TIMEOUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/chaos_slurm")
    parser.add_argument("--reference", type=Path, help="a finished Slurm run of the tiny config (skips its run)")
    parser.add_argument("--local", type=Path, help="a finished local run (else one runs beside the reference)")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--timeout", type=int, default=TIMEOUT, help="seconds for one Snakemake run")
    add_save_options(parser)
    args = parser.parse_args()
    if args.readme:
        rewrite_from_saved(TABLE, render, SAVED)
        return 0
    TIMEOUT = args.timeout
    start_cluster()
    reference = args.reference or args.out / "reference"
    local = args.local or args.out / "local"
    if args.reference is None:
        for workdir in (reference, *([] if args.local else [local])):
            if workdir.exists():
                shutil.rmtree(workdir)
        local_run = None if args.local else local_snakemake(copy_project(local))  # beside it, on this machine
        run = Snakemake(copy_project(reference), "run")
        if run.wait() != 0:
            raise SystemExit(f"the reference run failed: see {run.log}")
        (reference / "wall.txt").write_text(f"{time.monotonic() - run.t0:.1f}\n")
        if local_run is not None and local_run.wait() != 0:
            raise SystemExit(f"the local run failed in {local}")
    wall = float((reference / "wall.txt").read_text())  # a reused reference: its run's wall time, by hand
    print(f"reference run: {wall:.0f} s", flush=True)
    local = verdict(local, reference) if (local / "results").exists() else None
    if local is not None:
        print(f"local vs Slurm reference: {local}", flush=True)
    rows = []
    for name in args.scenarios:
        if (args.out / name.replace(" ", "-")).exists():
            shutil.rmtree(args.out / name.replace(" ", "-"))
        rows.append(scenario(name, args.out, reference))
        print(json.dumps(rows[-1], indent=1), flush=True)
    record = {"config": "tests/config/tiny.yaml", "reference_wall": wall, "local_vs_slurm": local,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other developers' runs",
              "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip(),
              "scenarios": rows}  # fmt: skip
    print(render(record))
    if args.save:
        SAVED.write_text(json.dumps(record, indent=1) + "\n")
        replace_table(TABLE[0], render(record), TABLE[1])
    return 0 if all(row["identical"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
