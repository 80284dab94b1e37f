"""Synthetic chained arithmetic, verifiable by a program.

    prompt:     What is 7+5-3?
    completion: 7+5=12
                12-3=9
                #### 9

Difficulty is the number of operations. Operands are small so a tiny model trained from scratch
on a 2-core CPU can learn the per-line sums within minutes; running values never go negative.
"""

from __future__ import annotations

import random
import re

import numpy as np

from sftdpo.bulk import gc_paused
from sftdpo.tasks import Problem, Task, Verdict

STEP = re.compile(r"^(\d+)([+\-*])(\d+)=(-?\d+)$")
ANSWER = re.compile(r"^####\s*(-?\d+)\s*$")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class ArithmeticTask(Task):
    name = "arithmetic"

    def __init__(self, min_ops: int = 1, max_ops: int = 3, max_operand: int = 9, ops: str = "+-"):
        if not 1 <= min_ops <= max_ops:
            raise ValueError(f"task.arithmetic: need 1 <= min_ops <= max_ops, got {min_ops}, {max_ops}")
        unknown = set(ops) - set(OPS)
        if unknown or not ops:
            raise ValueError(f"task.arithmetic.ops: unknown operators {sorted(unknown)}; use some of '+-*'")
        self.min_ops, self.max_ops, self.max_operand, self.ops = min_ops, max_ops, max_operand, ops

    # -- generation -------------------------------------------------------------------------
    def _expression(self, rng: random.Random, n_ops: int) -> tuple[list[int], list[str], int, str]:
        """(operands, operators, value, written expression) of a random expression with `n_ops` operations."""
        # rng._randbelow(k) is the one draw behind CPython's rng.randint(0, k - 1) and rng.choice of k items:
        # the same numbers, without two layers of argument checks that were half of the time of 1M problems.
        draw, n_operands, n_kinds = rng._randbelow, self.max_operand + 1, len(self.ops)
        operands = [draw(n_operands)]
        ops: list[str] = []
        value = operands[0]
        written = [str(value)]
        for _ in range(n_ops):
            b = draw(n_operands)
            op = self.ops[draw(n_kinds)]
            if op == "-" and b > value:  # keep running values non-negative
                op = "+"
            value = OPS[op](value, b)
            operands.append(b)
            ops.append(op)
            written += (op, str(b))
        return operands, ops, value, "".join(written)

    def max_problems(self) -> int:
        """How many distinct problems the settings allow (summed over levels; counted, not generated)."""
        return sum(self.problems_with_ops(level) for level in range(self.min_ops, self.max_ops + 1))

    def can_make(self, n: int) -> bool:
        """Whether `n` distinct problems exist, without counting them all when that is plain: each tuple of
        operands makes at least one expression, so (max_operand + 1) ** (ops + 1) per level is a lower bound
        (counting exactly takes a minute for max_operand 9999; requests near the limit are small spaces)."""
        levels = range(self.min_ops, self.max_ops + 1)
        return sum((self.max_operand + 1) ** (level + 1) for level in levels) >= n or self.max_problems() >= n

    def problems_with_ops(self, n_ops: int) -> int:
        """Distinct expressions with `n_ops` operations, as `_expression` writes them.

        Dynamic programming over the running value, which only matters for "-" (allowed while b <= value,
        else written as "+"). Values at or above `cap` are one state: from there at most max_ops * max_operand
        can still be subtracted, so every later "-" is allowed; only "*0" brings such a value back (to 0).
        Counts are floats (exact below 2**53; beyond that only the order of magnitude matters here)."""
        m = self.max_operand
        cap = (self.max_ops + 1) * m + 1
        big = cap  # index of the "cap or more" state
        operands = np.arange(m + 1)
        counts = np.zeros(cap + 1)
        counts[: m + 1] = 1.0  # the first operand
        for _ in range(n_ops):
            new = np.zeros(cap + 1)
            for value in np.flatnonzero(counts):
                c = counts[value]
                is_big = value == big
                for op in self.ops:
                    if op == "-":
                        allowed = operands if is_big else operands[operands <= value]
                        results = np.full(len(allowed), big) if is_big else value - allowed
                        if "+" not in self.ops and not is_big:  # b > value is written as "+": a string of its own
                            np.add.at(new, np.minimum(value + operands[operands > value], big), c)
                    elif op == "+":
                        results = np.full(m + 1, big) if is_big else np.minimum(value + operands, big)
                    else:
                        results = np.where(operands == 0, 0, big) if is_big else np.minimum(value * operands, big)
                    np.add.at(new, results, c)
            counts = new
        return int(counts.sum())

    @gc_paused()  # a million Problems (sftdpo.bulk)
    def problems(self, n: int, seed: int) -> list[Problem]:
        """`n` distinct problems; levels are drawn uniformly until a level's space is exhausted.

        A level closes after 200 draws in a row that were all repeats. Should every level close before `n`,
        the levels with expressions left are drawn from until they run out (repeats no longer close them), so
        any `n` up to `max_problems()` is made; the first phase alone decides the problems of smaller requests.
        """
        if not self.can_make(n):
            raise ValueError(
                f"task.arithmetic can make {self.max_problems()} distinct problems, not task.n_problems = {n}: "
                "raise max_ops, max_operand or add ops, or lower task.n_problems"
            )
        rng = random.Random(seed)
        seen: set[str] = set()
        levels = list(range(self.min_ops, self.max_ops + 1))
        misses = {level: 0 for level in levels}
        made = {level: 0 for level in levels}
        left: dict[int, int] | None = None  # expressions left per level, once every level has closed
        out: list[Problem] = []
        while len(out) < n:
            open_levels = [lv for lv in levels if misses[lv] < 200]
            if not open_levels:  # the tail: levels with expressions left, however many repeats that takes
                left = left or {lv: self.problems_with_ops(lv) for lv in levels}
                open_levels = [lv for lv in levels if made[lv] < left[lv]]
            level = rng.choice(open_levels)
            operands, ops, value, expr = self._expression(rng, level)
            if expr in seen:
                misses[level] += 1
                continue
            if left is None:
                misses[level] = 0
            made[level] += 1
            seen.add(expr)
            out.append(
                Problem(
                    id=f"arithmetic-{len(out):06d}",
                    prompt=f"What is {expr}?",
                    answer=str(value),
                    difficulty=str(level),
                    meta={"operands": operands, "ops": ops},
                )
            )
        return out

    # -- solving and checking ---------------------------------------------------------------
    def solve(self, problem: Problem) -> str:
        operands, ops = problem.meta["operands"], problem.meta["ops"]
        lines, value = [], operands[0]
        for op, b in zip(ops, operands[1:]):
            result = OPS[op](value, b)
            lines.append(f"{value}{op}{b}={result}")
            value = result
        lines.append(f"#### {value}")
        return "\n".join(lines)

    def extract_answer(self, completion: str) -> str | None:
        return _answer(completion.strip().splitlines())

    def verify(self, completion: str, answer: str) -> Verdict:
        lines = completion.strip().splitlines()  # split once: validation verifies every row (1M rows)
        prediction = _answer(lines)
        if prediction is None:
            return Verdict(False, None, "no_answer_line")
        if prediction != str(answer).strip():
            return Verdict(False, prediction, "wrong_answer")
        for line in lines[:-1]:
            match = STEP.match(line.strip())
            if not match:
                return Verdict(False, prediction, "malformed_step")
            a, op, b, result = match.groups()
            if OPS[op](int(a), int(b)) != int(result):
                return Verdict(False, prediction, "invalid_step")
        return Verdict(True, prediction, None)


def _answer(lines: list[str]) -> str | None:
    """The number of the last `#### <n>` line, if any."""
    for line in reversed(lines):
        match = ANSWER.match(line.strip())
        if match:
            return match.group(1)
    return None
