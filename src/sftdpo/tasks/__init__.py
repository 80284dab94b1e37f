"""Tasks: a problem generator, a prompt format, a verifier and a difficulty for each problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str
    difficulty: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    correct: bool
    prediction: str | None
    reason: str | None  # why it is wrong; None when correct


class Task(Protocol):
    name: str

    def problems(self, n: int, seed: int) -> list[Problem]:
        """`n` distinct problems, the same list for the same (n, seed)."""

    def solve(self, problem: Problem) -> str:
        """A correct step-by-step completion ending in the task's answer line."""

    def extract_answer(self, completion: str) -> str | None: ...

    def verify(self, completion: str, answer: str) -> Verdict: ...


def get_task(name: str, **options: Any) -> Task:
    from sftdpo.tasks.arithmetic import ArithmeticTask

    registry = {"arithmetic": ArithmeticTask}
    if name not in registry:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(registry)}")
    return registry[name](**options)
