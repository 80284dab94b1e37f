"""Progress a person can follow: short labelled console lines from jobs, and a summary after the run."""

import json
import re

import pytest

from conftest import TINY_SFT_STEPS
from sftdpo.pages import Table, text
from sftdpo.progress import Progress, duration, rate_and_eta
from sftdpo.training import log_line


def test_durations_rates_and_lines(capsys):
    assert [duration(s) for s in (0.4, 42, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]
    assert rate_and_eta(50, 200, 25.0, "steps") == "2 steps/s, ETA 1m15s"
    assert rate_and_eta(0, 200, 3.0, "steps") == "- steps/s"
    line = log_line("dpo", 40, 200, {"loss": 0.69314, "rewards/accuracies": 0.75, "epoch": 1.5, "grad_norm": 3.2}, "r")
    assert line == "dpo step 40/200 loss 0.6931 rewards/accuracies 0.75 | r"

    progress = Progress("evaluate sft", 10, unit="items", resumed=4, every=0.0)
    progress.update(3)
    progress.update(3)
    progress.close()
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"evaluate sft: 7/10 items, \S+ items/s, ETA \d+s", lines[0])
    assert re.fullmatch(r"evaluate sft: 10/10 items \(4 resumed\) in \d+s, \S+ items/s", lines[-1])
    assert len(lines) == 3


def test_text_table_aligns_columns():
    table = Table("t", ["stage", "accuracy"], [["base", 0.0], ["dpo-long-name", 0.8125]])
    assert text(table).splitlines() == ["stage          accuracy", "base           0.000", "dpo-long-name  0.812"]


@pytest.mark.e2e
def test_console_of_a_run(tiny_run):
    """The console of `snakemake -c2` on the tiny config: one line per logging step for SFT and DPO, rows
    done/total for collect, rollouts and evaluate, no `Shell command: None`, no dicts of quoted numbers,
    and accuracy per stage with CIs at the end."""
    workdir, proc = tiny_run
    console = proc.stdout + proc.stderr
    assert "Shell command: None" not in console and "{'loss'" not in console and "'train_runtime'" not in console
    steps = re.findall(rf"^sft step (\d+)/{TINY_SFT_STEPS} loss \S+ .*\| \S+ steps/s, ETA \S+$", console, re.M)
    assert steps == [str(s) for s in range(20, TINY_SFT_STEPS + 1, 20)]  # logging_steps 20
    assert re.findall(r"^dpo step (\d+)/10 loss \S+ rewards/accuracies \S+ .*\|", console, re.M) == [
        "2",
        "4",
        "6",
        "8",
        "10",
    ]
    assert re.search(rf"^sft done: {TINY_SFT_STEPS}/{TINY_SFT_STEPS} steps in \d+", console, re.M)
    test = json.loads((workdir / "results/data/split.json").read_text())["counts"]["test"]
    for stage in ("base", "sft", "dpo"):
        assert re.search(rf"^evaluate {stage}: {test}/{test} items in \S+, \S+ items/s$", console, re.M)
    for shard in (0, 1):
        assert re.search(rf"^collect shard {shard}: 500/500 demos in \S+, \S+ demos/s$", console, re.M)
        assert re.search(rf"^rollouts shard {shard}: 28/28 prompts in \S+, \S+ prompts/s$", console, re.M)

    summary = json.loads((workdir / "results/report/summary.json").read_text())
    end = console[console.index("Test accuracy (results/report/summary.json") :]
    for stage, s in summary["stages"].items():
        lo, hi = s["ci95"]
        cells = [stage, f"{s['accuracy']:.3f}", f"[{lo:.3f}, {hi:.3f}]", str(s["n"])]
        assert re.search("^" + " +".join(map(re.escape, cells)) + " ", end, re.M)
    for name, d in summary["deltas"].items():
        cells = [name, f"{d['mean']:+.3f}", f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]", str(d["n"])]
        assert re.search("^" + " +".join(map(re.escape, cells)) + "$", end, re.M)
    assert "Report: results/report/report.md" in end and "snakemake --report report.html" in end
