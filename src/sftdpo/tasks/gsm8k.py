"""GSM8K: grade-school math word problems from a JSONL file, verified on the final number.

    prompt:     Natalia sold clips to 48 of her friends in April, and then ...
    completion: Natalia sold 48/2 = 24 clips in May.
                Natalia sold 48+24 = 72 clips altogether in April and May.
                #### 72

The problems come from the configured file (`task.gsm8k.path`, one `{"question", "answer"}` object a
line, as in openai/grade-school-math). The answer is the number after `#### ` on the solution's last
line; a completion without such a line is read by its last number (fallback). Numbers are read exactly
(sftdpo.answers: `1,080` = `1080`, `$18` = `18`, `18.0` = `18`, `.5` = `0.5`, `3/4` = `0.75`, `−5` = `-5`)
and compared as exact fractions; an answer line that is not one readable number (`#### 1,5`, `#### 5 or 6`)
counts as no answer, never as a guessed number. The gold
solutions carry calculator annotations (`<<48/2=24>>`); they are stripped by default
(`strip_annotations`), and when a completion keeps them the verifier checks their arithmetic.

Difficulty is the number of solution steps (non-empty lines before the answer line), bucketed by
`buckets` (default `[2, 4]` -> "1-2", "3-4", "5+").
"""

from __future__ import annotations

import ast
import math
import operator
import random
import re
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

from sftdpo.answers import ANSWER_PATTERNS, NumberError, canonical, final_answer, find_numbers, normalise, parse_number
from sftdpo.records import BadRow, bad_row_message, read_records, text_field
from sftdpo.tasks import Problem, Task, Verdict

ANSWER_LINE = re.compile(r"^\s*####\s*(.*?)\s*$", re.M)
ANNOTATION = re.compile(r"<<([^<>]*)>>")
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def normalise_number(text: str | None) -> str | None:
    """Canonical text of the one number in `text` (sftdpo.answers), None when it is not one readable number.

    `"1,080"` -> `"1080"`, `"$18.00"` -> `"18"`, `"0.50"` -> `"0.5"`, `".5"` -> `"0.5"`, `"−5"` -> `"-5"`,
    `"1 234"` -> `"1234"`, `"3/4"` -> `"0.75"`, `"1/3"` -> `"1/3"`, `"25%"` -> `"25"`; `"1,5"` and `"5 and 3"` -> None.
    """
    return normalise(text)


def extract_answer(completion: str) -> tuple[str | None, str]:
    """(normalised answer, how it was found): the last `#### n` line, else the last number in the text.

    A last `####` line that is not one readable number gives (None, "unreadable_answer_line"): never a
    number guessed from it.
    """
    try:
        found = final_answer(completion or "", ANSWER_PATTERNS["####"])
    except NumberError:
        return None, "unreadable_answer_line"
    if found is not None:
        return canonical(found.value), "answer_line"
    numbers = find_numbers(ANNOTATION.sub("", completion or ""))
    if numbers:
        return canonical(numbers[-1][1]), "last_number"
    return None, "none"


def strip_annotations(text: str) -> str:
    return ANNOTATION.sub("", text)


def format_solution(solution: str, *, strip: bool = True) -> str:
    """A gold solution as a demonstration: its steps (annotations stripped), then `#### <normalised answer>`."""
    text = strip_annotations(solution) if strip else solution
    body = [line.rstrip() for line in text.strip().splitlines() if not ANSWER_LINE.match(line)]
    return "\n".join([*body, f"#### {extract_answer(solution)[0]}"])


def solution_steps(solution: str) -> int:
    """Non-empty lines before the `####` answer line."""
    steps = 0
    for line in solution.strip().splitlines():
        if ANSWER_LINE.match(line):
            break
        steps += bool(line.strip())
    return steps


def bucket(steps: int, edges: list[int]) -> str:
    """Difficulty label of a step count: edges [2, 4] -> "1-2", "3-4", "5+"."""
    low = 1
    for edge in edges:
        if steps <= edge:
            return f"{low}-{edge}" if low != edge else str(edge)
        low = edge + 1
    return f"{low}+"


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"not arithmetic: {type(node).__name__}")


def check_annotations(completion: str, rel_tol: float = 1e-2) -> str | None:
    """The first calculator annotation whose arithmetic is wrong, or None (unparseable ones are skipped)."""
    for body in ANNOTATION.findall(completion):
        if body.count("=") != 1:
            continue
        expr, result = body.split("=")
        try:
            value = _evaluate(ast.parse(expr.replace(",", "").replace("x", "*"), mode="eval"))
            claimed = float(parse_number(result))
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):  # NumberError too
            continue
        if not math.isclose(value, claimed, rel_tol=rel_tol, abs_tol=1e-6):
            return body
    return None


def gsm8k_fields(data: dict[str, Any], columns: dict[str, str]) -> tuple[str, str]:
    """(question, worked solution) of a GSM8K row, or BadRow naming the field."""
    question = text_field(data, "question", columns)
    solution = text_field(data, "answer", columns)
    try:
        found = final_answer(solution, ANSWER_PATTERNS["####"])
    except NumberError as err:
        if err.kind == "none":
            raise BadRow("answer", "the '####' line holds no number") from None
        raise BadRow("answer", f"the '####' line is not one number: {err}") from None
    if found is None:
        raise BadRow("answer", "no '#### <number>' answer line")
    return question, solution


@lru_cache(maxsize=8)
def load_gsm8k(path: str, mtime_ns: int) -> tuple[dict[str, Any], ...]:
    """Rows of a GSM8K file (read like `expert: files` reads one); a bad row stops with file, line and field."""
    rows = []
    for record in read_records(path, "task.gsm8k.path"):
        try:
            if record.error:
                raise BadRow(None, record.error)
            question, solution = gsm8k_fields(record.data or {}, {})
        except BadRow as err:
            raise ValueError(bad_row_message(record, err)) from None
        rows.append({"question": question, "answer": solution, "line": record.number})
    if not rows:
        raise ValueError(f"{path}: no rows")
    return tuple(rows)


class GSM8KTask(Task):
    name = "gsm8k"

    def __init__(
        self,
        path: str | None = None,
        prompt_template: str = "{question}",
        buckets: list[int] | None = None,
        strip_annotations: bool = True,
    ):
        buckets = [2, 4] if buckets is None else list(buckets)
        if buckets != sorted(set(buckets)) or any(b < 1 for b in buckets):
            raise ValueError(f"task.gsm8k.buckets must be increasing positive step counts, got {buckets}")
        if "{question}" not in prompt_template:
            raise ValueError(f"task.gsm8k.prompt_template must contain '{{question}}', got {prompt_template!r}")
        self.path, self.prompt_template, self.buckets = path, prompt_template, buckets
        self.strip = strip_annotations

    # -- problems from the file ---------------------------------------------------------------
    def rows(self) -> tuple[dict[str, Any], ...]:
        if not self.path:
            raise ValueError("task.gsm8k.path is not set: point it to a GSM8K JSONL file ({question, answer} a line)")
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"task.gsm8k.path: {self.path} does not exist (working directory {Path.cwd()})")
        return load_gsm8k(str(path), path.stat().st_mtime_ns)

    def max_problems(self) -> int:
        return len(self.rows())

    def make_prompt(self, question: str) -> str:
        return self.prompt_template.format(question=question.strip())

    def difficulty(self, completion: str) -> str:
        return bucket(solution_steps(completion), self.buckets)

    def problems(self, n: int, seed: int) -> list[Problem]:
        """`n` problems drawn without replacement by `seed`, in file order; ids name the file row."""
        rows = self.rows()
        if n > len(rows):
            raise ValueError(
                f"task.gsm8k: asked for {n} problems but {self.path} has {len(rows)} rows; lower task.n_problems"
            )
        stem = Path(self.path).stem
        chosen = sorted(random.Random(seed).sample(range(len(rows)), n))
        out = []
        for index in chosen:
            row = rows[index]
            out.append(
                Problem(
                    id=f"gsm8k-{stem}-{index:05d}",
                    prompt=self.make_prompt(row["question"]),
                    answer=extract_answer(row["answer"])[0],
                    difficulty=self.difficulty(row["answer"]),
                    meta={"file": str(self.path), "line": row["line"], "steps": solution_steps(row["answer"])},
                )
            )
        return out

    # -- solving and checking -----------------------------------------------------------------
    def solve(self, problem: Problem) -> str:
        """The gold solution (annotations stripped unless `strip_annotations: false`), answer normalised."""
        rows = self.rows()
        if getattr(self, "_indexed", None) is not rows:
            self._by_line, self._indexed = {row["line"]: row for row in rows}, rows
        by_line = self._by_line
        line = problem.meta.get("line")
        if line not in by_line:
            raise KeyError(f"{self.path}: no row at line {line} for problem {problem.id}")
        return self.format_solution(by_line[line]["answer"])

    def format_solution(self, solution: str) -> str:
        return format_solution(solution, strip=self.strip)

    def extract_answer(self, completion: str) -> str | None:
        return extract_answer(completion)[0]

    def verify(self, completion: str, answer: str) -> Verdict:
        prediction, _how = extract_answer(completion)
        if prediction is None:
            return Verdict(False, None, "no_answer_line")
        gold = normalise_number(str(answer))
        if gold is None or Fraction(prediction) != Fraction(gold):
            return Verdict(False, prediction, "wrong_answer")
        if check_annotations(completion) is not None:
            return Verdict(False, prediction, "invalid_step")
        return Verdict(True, prediction, None)
