"""Tasks: a problem generator, a prompt format, a verifier and a difficulty for each problem.

- `arithmetic`: synthetic chained sums, generated from a seed (the embedded default);
- `gsm8k`: grade-school math word problems read from a JSONL file (`task.gsm8k.path`).

Constructing a task reads no data: validation and evaluation build tasks only to verify rows.
"""

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

    # Optional: `difficulty(completion) -> str`, the difficulty of a worked solution (for imported rows);
    # without it, `solution_difficulty` counts the solution's steps.


def solution_difficulty(task: Task, completion: str) -> str:
    """Difficulty of an imported demonstration: the task's own rule, else its number of step lines."""
    rule = getattr(task, "difficulty", None)
    if callable(rule):
        return rule(completion)
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    steps = [line for line in lines if not line.lstrip().startswith("####")]
    return str(max(len(steps), 1))


TASKS = ("arithmetic", "gsm8k")


def get_task(name: str, **options: Any) -> Task:
    from sftdpo.tasks.arithmetic import ArithmeticTask
    from sftdpo.tasks.gsm8k import GSM8KTask

    registry = {"arithmetic": ArithmeticTask, "gsm8k": GSM8KTask}
    if name not in registry:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(registry)}")
    return registry[name](**options)
