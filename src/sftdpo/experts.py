"""Experts write demonstrations for a task's problems.

This module ships the `program` expert (the task's own solver). It can emulate an imperfect
teacher with `error_rate`, so validation has real errors to catch; which rows were corrupted is
recorded in `meta.injected_error` (lineage only: validation never reads it).
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from sftdpo.tasks import Problem, Task


class Expert(Protocol):
    name: str

    def demonstrate(self, problem: Problem) -> tuple[str, dict[str, Any]]:
        """Return (completion, meta) for one problem."""


class ProgramExpert:
    name = "program"

    def __init__(self, task: Task, error_rate: float = 0.0, seed: int = 0):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"collect.error_rate must be in [0, 1], got {error_rate}")
        self.task, self.error_rate, self.seed = task, error_rate, seed

    def demonstrate(self, problem: Problem) -> tuple[str, dict[str, Any]]:
        completion = self.task.solve(problem)
        # One generator per problem: the same row whatever the shard layout or resume point.
        rng = random.Random(f"{self.seed}:{problem.id}")
        meta: dict[str, Any] = {"seed": self.seed, "error_rate": self.error_rate}
        if rng.random() < self.error_rate:
            completion, kind = _corrupt(completion, rng)
            meta["injected_error"] = kind
        return completion, meta


def _corrupt(completion: str, rng: random.Random) -> tuple[str, str]:
    """Either a wrong final answer or a wrong intermediate result (steps still well-formed)."""
    lines = completion.split("\n")
    value = int(lines[-1].removeprefix("#### "))
    delta = rng.choice([-3, -2, -1, 1, 2, 3])
    if len(lines) > 1 and rng.random() < 0.5:
        left, result = lines[0].rsplit("=", 1)
        lines[0] = f"{left}={int(result) + delta}"
        return "\n".join(lines), "invalid_step"
    lines[-1] = f"#### {value + delta}"
    return "\n".join(lines), "wrong_answer"


def get_expert(name: str, task: Task, **options: Any) -> Expert:
    if name == "program":
        return ProgramExpert(task, **options)
    raise ValueError(f"unknown expert {name!r}; known experts: ['program']")
