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
    def _expression(self, rng: random.Random, n_ops: int) -> tuple[list[int], list[str]]:
        operands = [rng.randint(0, self.max_operand)]
        ops: list[str] = []
        value = operands[0]
        for _ in range(n_ops):
            b = rng.randint(0, self.max_operand)
            op = rng.choice(self.ops)
            if op == "-" and b > value:  # keep running values non-negative
                op = "+"
            value = OPS[op](value, b)
            operands.append(b)
            ops.append(op)
        return operands, ops

    def problems(self, n: int, seed: int) -> list[Problem]:
        """`n` distinct problems; levels are drawn uniformly until a level's space is exhausted."""
        rng = random.Random(seed)
        seen: set[str] = set()
        levels = list(range(self.min_ops, self.max_ops + 1))
        misses = {level: 0 for level in levels}
        out: list[Problem] = []
        while len(out) < n:
            open_levels = [lv for lv in levels if misses[lv] < 200]
            if not open_levels:
                raise ValueError(
                    f"task.arithmetic cannot make {n} distinct problems (made {len(out)}): "
                    "raise max_ops or max_operand, or lower task.n_problems"
                )
            level = rng.choice(open_levels)
            operands, ops = self._expression(rng, level)
            expr = str(operands[0]) + "".join(f"{op}{b}" for op, b in zip(ops, operands[1:]))
            if expr in seen:
                misses[level] += 1
                continue
            misses[level] = 0
            seen.add(expr)
            out.append(
                Problem(
                    id=f"arithmetic-{len(out):06d}",
                    prompt=f"What is {expr}?",
                    answer=str(_evaluate(operands, ops)),
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
        for line in reversed(completion.strip().splitlines()):
            match = ANSWER.match(line.strip())
            if match:
                return match.group(1)
        return None

    def verify(self, completion: str, answer: str) -> Verdict:
        prediction = self.extract_answer(completion)
        if prediction is None:
            return Verdict(False, None, "no_answer_line")
        if prediction != str(answer).strip():
            return Verdict(False, prediction, "wrong_answer")
        for line in completion.strip().splitlines()[:-1]:
            match = STEP.match(line.strip())
            if not match:
                return Verdict(False, prediction, "malformed_step")
            a, op, b, result = match.groups()
            if OPS[op](int(a), int(b)) != int(result):
                return Verdict(False, prediction, "invalid_step")
        return Verdict(True, prediction, None)


def _evaluate(operands: list[int], ops: list[str]) -> int:
    value = operands[0]
    for op, b in zip(ops, operands[1:]):
        value = OPS[op](value, b)
    return value
