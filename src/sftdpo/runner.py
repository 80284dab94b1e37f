"""What every workflow script does before calling its library function.

- stderr (progress bars, warnings, tracebacks) and logging go to the rule's log file;
- torch uses the rule's `threads`;
- test-only fault injection via environment variables (never config, so it cannot change results):
  SFTDPO_FAIL_ONCE=<rule>:<marker file> fails <rule> on its first attempt only;
  SFTDPO_FAIL_ALWAYS=<rule> fails it every time.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable


class InjectedFailure(RuntimeError):
    pass


def inject_faults(rule: str) -> None:
    once = os.environ.get("SFTDPO_FAIL_ONCE", "")
    if once.partition(":")[0] == rule:
        marker = Path(once.partition(":")[2])
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("failed once\n")
            raise InjectedFailure(f"injected failure in rule {rule} (first attempt; marker {marker})")
    if os.environ.get("SFTDPO_FAIL_ALWAYS") == rule:
        raise InjectedFailure(f"injected failure in rule {rule}")


def run(snakemake: Any, stage: Callable[[], Any]) -> Any:
    log_path = snakemake.log[0]
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as log_file:
        sys.stderr = log_file
        logging.basicConfig(
            level=logging.INFO, stream=log_file, force=True,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("sftdpo").info("rule %s, wildcards %s, threads %d", snakemake.rule,
                                         dict(snakemake.wildcards), snakemake.threads)
        try:
            import torch

            torch.set_num_threads(max(1, int(snakemake.threads)))
            inject_faults(snakemake.rule)
            return stage()
        except Exception:
            traceback.print_exc(file=log_file)
            # Keep the last line short and clear for Snakemake's own error output.
            sys.stderr = sys.__stderr__
            raise
