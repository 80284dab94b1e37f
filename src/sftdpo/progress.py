"""Progress a person can follow on the console: one short line at a time, labelled with the job.

Jobs write these lines to stdout, which Snakemake shows on the console (the runner sends stderr,
with the tqdm bars, to the rule's log); each line also goes to the rule's log through logging.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)

# Seconds between two progress lines of one job (and a line at the end).
EVERY_SECONDS = 15.0


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def console(line: str) -> None:
    """One line for the person at the console, also in the rule's log."""
    print(line, file=sys.stdout, flush=True)
    log.info(line)


def rate_and_eta(done: int, total: int, elapsed: float, unit: str) -> str:
    """`12.5 rows/s, ETA 1m20s` (the rate over this run's work; no ETA before the first item)."""
    if done <= 0 or elapsed <= 0:
        return f"- {unit}/s"
    rate = done / elapsed
    return f"{rate:.3g} {unit}/s, ETA {duration(max(total - done, 0) / rate)}"


class Progress:
    """`<label>: <done>/<total> <unit>, <rate>, ETA <t>` every EVERY_SECONDS, and a final line on close.

    `resumed` items were done by an earlier run: they count as done but not in the rate.
    """

    def __init__(self, label: str, total: int, *, unit: str = "rows", resumed: int = 0, every: float = EVERY_SECONDS):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.resumed = self.done = resumed
        self.started = self.printed = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.printed >= self.every:
            self.printed = now
            console(f"{self.label}: {self.done}/{self.total} {self.unit}, {self._rate(now)}")

    def _rate(self, now: float) -> str:
        return rate_and_eta(self.done - self.resumed, self.total - self.resumed, now - self.started, self.unit)

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        resumed = f" ({self.resumed} resumed)" if self.resumed else ""
        speed = f", {(self.done - self.resumed) / elapsed:.3g} {self.unit}/s" if elapsed > 0 else ""
        console(f"{self.label}: {self.done}/{self.total} {self.unit}{resumed} in {duration(elapsed)}{speed}")
