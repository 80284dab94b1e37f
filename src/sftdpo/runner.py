"""What every workflow script does around its one library call: `run(snakemake, lambda: stage(...))`.

- stderr (progress bars, warnings, tracebacks) and logging go to the rule's log file, and stderr is
  restored afterwards;
- a rule that computes with torch passes a `threads` param (`<stage>.resources.threads` from the
  config): torch uses exactly that many intra-op threads, whatever `--cores` gives the job, so the
  floating-point reduction order, hence the model's result, is fixed by the config (Snakemake's own
  `threads` only schedules). Rules without it never import torch here;
- those rules load model directories that base_model wrote (a Hub model is downloaded there), so they run
  with the Hugging Face Hub offline (HF_HUB_OFFLINE=1): a GPU node without internet never waits on it;
- after the library call returns, a lineage sidecar for each output that is a table or a model directory
  (`sftdpo.lineage`: inputs with digests, params, code fingerprint, package versions);
- `start_job()`, called by every rule script before it imports its stage, makes the garbage collector's full
  collections rare: a model job reaches its first forward pass 0.3-0.7 s sooner (this module imports nothing heavy,
  so it can come first);
- test-only fault injection via environment variables (never config, so it cannot change results):
  SFTDPO_FAIL_ONCE=<rule>:<marker file> fails <rule> on its first attempt only;
  SFTDPO_FAIL_ALWAYS=<rule> fails it every time.
"""

from __future__ import annotations

import gc
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


# Full collections of the cyclic garbage collector in a job: after this many collections of the middle generation
# (Python's default is 10). `start_job`.
FULL_COLLECTION_EVERY = 1000


def start_job() -> None:
    """Called by every rule script before it imports its stage: the cyclic garbage collector's full collections
    become rare. Each walks the whole heap, and while a job imports torch, transformers and TRL the heap keeps
    growing by the quarter that triggers the next one: six full collections in a bare script that loads a model,
    0.3-0.7 s of a model job's 3.4-5.5 s way to its first forward pass (README, after the first-forward table). Young
    garbage is collected as before; the numerics do not depend on it."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def compute_threads(snakemake: Any) -> int | None:
    """The torch thread count a rule asks for in its params (None: the rule does not use torch)."""
    threads = snakemake.params.get("threads")
    return None if threads is None else max(1, int(threads))


def hub_offline() -> None:
    """HF_HUB_OFFLINE=1 for this job, also when the rule script imported huggingface_hub already (it reads
    the variable once, at import)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True


def named_paths(files: Any) -> list[tuple[str | None, str]]:
    """(name or None, path) for each file of a rule's input, in order (a named entry may be a list of files)."""
    names: dict[str, str] = {}
    for name, value in files.items():
        for path in [value] if isinstance(value, str) else value:
            names.setdefault(str(path), name)
    return [(names.get(str(path)), str(path)) for path in files]


def run(snakemake: Any, stage: Callable[[], Any]) -> Any:
    """Run `stage()` with the rule's log as stderr and logging stream; re-raise its error after logging it."""
    from sftdpo.lineage import remove_sidecars, write_sidecars  # pandas: after `start_job`

    log_path = snakemake.log[0]
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    threads = compute_threads(snakemake)
    with open(log_path, "w", buffering=1) as log_file:
        sys.stderr = log_file
        try:
            logging.basicConfig(
                level=logging.INFO,
                stream=log_file,
                force=True,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
            logging.getLogger("sftdpo").info(
                "rule %s, wildcards %s, scheduled threads %d, compute threads %s",
                snakemake.rule,
                dict(snakemake.wildcards),
                snakemake.threads,
                threads if threads else "-",
            )
            if threads:
                hub_offline()
                import torch

                torch.set_num_threads(threads)
            inject_faults(snakemake.rule)
            outputs = [str(o) for o in snakemake.output]
            remove_sidecars(outputs)
            result = stage()
            write_sidecars(
                rule=snakemake.rule,
                wildcards=dict(snakemake.wildcards.items()),
                inputs=named_paths(snakemake.input),
                outputs=outputs,
                params=dict(snakemake.params.items()),
            )
            return result
        except Exception:
            traceback.print_exc(file=log_file)
            raise
        finally:
            # Snakemake's own error output (and anything after the job) must not go to a closed file.
            sys.stderr = sys.__stderr__
            logging.basicConfig(level=logging.INFO, stream=sys.__stderr__, force=True)
