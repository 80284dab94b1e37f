"""Tasks: a problem generator, a prompt format, a verifier and a difficulty for each problem.

- `arithmetic`: synthetic chained sums, generated from a seed (the embedded default);
- `gsm8k`: grade-school math word problems read from a JSONL file (`task.gsm8k.path`).

Constructing a task reads no data: validation and evaluation build tasks only to verify rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str
    difficulty: str
    # JSON values: rule problems writes it as JSON text for the collect shards, which read it back.
    meta: dict[str, Any] = field(default_factory=dict)


class Verdict(NamedTuple):  # a tuple, not a frozen dataclass: validate builds one a row (1M rows), 2.6× faster
    correct: bool
    prediction: str | None
    reason: str | None  # why it is wrong; None when correct


class Task:
    """A problem source, a prompt format, a verifier and a difficulty rule; subclasses fill in the rest."""

    name: str

    def problems(self, n: int, seed: int) -> list[Problem]:
        """`n` distinct problems, the same list for the same (n, seed)."""
        raise NotImplementedError

    def max_problems(self) -> int | None:
        """How many distinct problems `problems` can give (None: as many as asked)."""
        return None

    def can_make(self, n: int) -> bool:
        """Whether `problems(n, seed)` can give `n` distinct problems."""
        available = self.max_problems()
        return available is None or n <= available

    def solve(self, problem: Problem) -> str:
        """A correct step-by-step completion ending in the task's answer line."""
        raise NotImplementedError

    def extract_answer(self, completion: str) -> str | None:
        raise NotImplementedError

    def verify(self, completion: str, answer: str) -> Verdict:
        raise NotImplementedError

    def make_prompt(self, question: str) -> str:
        """The user message for a question of an imported row."""
        return question.strip()

    def difficulty(self, completion: str) -> str:
        """Difficulty of a worked solution (imported rows): its number of step lines."""
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


def size_problems(config: dict[str, Any]) -> list[str]:
    """task.n_problems beyond what a generated task can make, as a sentence naming the keys (tasks read
    from a file are counted by sftdpo.config_checks; collect.expert files does not use n_problems)."""
    task = config["task"]
    if task["name"] != "arithmetic" or config["collect"]["expert"] == "files":
        return []
    options = task["arithmetic"]
    if options["min_ops"] > options["max_ops"]:
        return []  # sftdpo.config_checks names that one
    arithmetic = get_task("arithmetic", **options)
    if arithmetic.can_make(task["n_problems"]):
        return []
    return [
        f"task.n_problems ({task['n_problems']}) > the {arithmetic.max_problems()} distinct problems "
        f"task.arithmetic can make with {options}: raise task.arithmetic.max_operand or max_ops, add ops, "
        "or lower task.n_problems"
    ]
