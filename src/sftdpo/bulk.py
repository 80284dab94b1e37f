"""Loops over a million rows in Python: what keeps them linear."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block without the cyclic garbage collector. A loop that builds a million small objects (problems,
    rows, token lists) triggers its passes every few hundred allocations, and each full pass walks the whole heap:
    18-46% of the data stages' time at 200k-1M rows. The rows these loops build hold no reference cycles, so
    nothing waits for the collector; it runs again as usual after the block (nested blocks are fine)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def spawned_pool(workers: int, initializer: Callable[..., None], initargs: tuple) -> ProcessPoolExecutor:
    """`workers` spawned processes, each running `initializer(*initargs)` first (see `ordered_map` for why spawned)."""
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer, initargs=initargs
    )


def ordered_map(
    function: Callable[[Any], Any],
    blocks: Iterable,
    *,
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple = (),
) -> Iterator[Any]:
    """`function(block)` of every block, in order. With `workers` > 1, that many worker processes work side by
    side, at most two blocks a worker ahead of the consumer, so memory stays flat; otherwise this process does
    it all. `initializer(*initargs)` runs once in each process that calls `function` (this one included).

    The workers are spawned (a fresh interpreter, not a fork of this one with Arrow's and a tokenizer's threads
    in it), so they import the calling script again: a script that calls this with workers needs an
    `if __name__ == "__main__":` guard (workflow/scripts/convert.py and validate.py have one). A worker that dies
    ends the job with an error (BrokenProcessPool), never a wait."""
    if workers <= 1:
        initializer(*initargs)
        yield from map(function, blocks)
        return
    with spawned_pool(workers, initializer, initargs) as pool:
        pending: deque = deque()
        for block in blocks:
            pending.append(pool.submit(function, block))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextlib.contextmanager
def background_map(
    function: Callable[[Any], Any],
    blocks: list,
    *,
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple = (),
) -> Iterator[Callable[[], list]]:
    """Within the block, a function that returns `function(block)` of every block, in order. With `workers` > 1
    every block is handed to that many spawned worker processes on entry (see `ordered_map`), so they work while
    the caller goes on, and the function waits for them; otherwise the function does the work when called. The
    workers are shut down on exit, unfinished blocks cancelled."""
    if workers <= 1:
        yield lambda: list(ordered_map(function, blocks, workers=1, initializer=initializer, initargs=initargs))
        return
    with spawned_pool(workers, initializer, initargs) as pool:
        futures = [pool.submit(function, block) for block in blocks]
        try:
            yield lambda: [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()
