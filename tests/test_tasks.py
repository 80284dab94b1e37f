import itertools
import json

import pytest

from sftdpo.experts import ProgramExpert
from sftdpo.tasks import get_task
from sftdpo.tasks.arithmetic import OPS


@pytest.fixture
def task():
    return get_task("arithmetic", min_ops=1, max_ops=3, max_operand=9, ops="+-")


def test_problems_are_distinct_deterministic_and_levelled(task):
    problems = task.problems(1500, seed=3)
    assert len({p.prompt for p in problems}) == 1500
    assert [p.prompt for p in problems] == [p.prompt for p in task.problems(1500, seed=3)]
    assert [p.prompt for p in problems] != [p.prompt for p in task.problems(1500, seed=4)]
    for p in problems:
        expr = p.prompt.removeprefix("What is ").removesuffix("?")
        n_ops = sum(expr.count(op) for op in "+-")
        assert p.difficulty == str(n_ops)
        assert int(p.answer) >= 0
    assert {p.difficulty for p in problems} == {"1", "2", "3"}


def test_solver_output_verifies_and_shows_steps(task):
    for p in task.problems(200, seed=0):
        completion = task.solve(p)
        assert task.verify(completion, p.answer).correct
        assert completion.splitlines()[-1] == f"#### {p.answer}"
        assert len(completion.splitlines()) == int(p.difficulty) + 1


@pytest.mark.parametrize(
    "completion, reason",
    [
        ("7+5=12\n12-3=9\n#### 8", "wrong_answer"),
        ("7+5=13\n13-3=9\n#### 9", "invalid_step"),
        ("7+5 is 12\n12-3=9\n#### 9", "malformed_step"),
        ("7+5=12\n12-3=9", "no_answer_line"),
        ("", "no_answer_line"),
    ],
)
def test_verifier_names_the_error(task, completion, reason):
    verdict = task.verify(completion, "9")
    assert not verdict.correct
    assert verdict.reason == reason


def test_expert_error_rate_is_emulated_and_caught(task):
    problems = task.problems(2000, seed=0)
    expert = ProgramExpert(task, error_rate=0.1, seed=0)
    injected = 0
    for p in problems:
        completion, meta = expert.demonstrate(p)
        verdict = task.verify(completion, p.answer)
        assert verdict.correct == ("injected_error" not in meta)
        injected += "injected_error" in meta
    assert 150 < injected < 250  # ~10% of 2000
    # Same problem, same seed: same demonstration, whatever the order of calls.
    assert expert.demonstrate(problems[7]) == ProgramExpert(task, error_rate=0.1, seed=0).demonstrate(problems[7])
    assert json.dumps(expert.demonstrate(problems[7])[1])


def test_unknown_task_and_impossible_request():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("chess")
    with pytest.raises(ValueError, match=r"can make 26 distinct problems, not task.n_problems = 500"):
        get_task("arithmetic", min_ops=1, max_ops=1, max_operand=3).problems(500, seed=0)


def written_expressions(task, n_ops: int) -> set[str]:
    """Every expression with n_ops operations, by enumerating what `_expression` can draw."""
    out = set()
    for operands in itertools.product(range(task.max_operand + 1), repeat=n_ops + 1):
        for drawn in itertools.product(task.ops, repeat=n_ops):
            value, text = operands[0], str(operands[0])
            for op, b in zip(drawn, operands[1:]):
                op = "+" if op == "-" and b > value else op  # as _expression writes it
                value = OPS[op](value, b)
                text += f"{op}{b}"
            out.add(text)
    return out


@pytest.mark.parametrize("ops", ["+-", "-", "+", "*", "+-*", "-*"])
@pytest.mark.parametrize("max_operand", [2, 5])
def test_the_number_of_distinct_problems_is_counted_exactly(ops, max_operand):
    task = get_task("arithmetic", min_ops=1, max_ops=3, max_operand=max_operand, ops=ops)
    for n_ops in (1, 2, 3):
        assert task.problems_with_ops(n_ops) == len(written_expressions(task, n_ops)), n_ops


def test_every_distinct_problem_can_be_asked_for(task):
    # The default family: 48,545 expressions (the generator used to give up near 46,700).
    assert task.max_problems() == 48_545
    problems = task.problems(48_545, seed=0)
    assert len({p.prompt for p in problems}) == 48_545
    assert {p.difficulty: 0 for p in problems}.keys() == {"1", "2", "3"}
    assert task.can_make(48_545) and not task.can_make(48_546)
    with pytest.raises(ValueError, match="can make 48545 distinct problems"):
        task.problems(48_546, seed=0)


def test_larger_settings_make_over_ten_million_problems():
    task = get_task("arithmetic", min_ops=1, max_ops=4, max_operand=99, ops="+-")
    assert task.max_problems() > 10**10 and task.can_make(10**7)
    problems = task.problems(20_000, seed=1)
    assert len({p.prompt for p in problems}) == 20_000
    assert all(task.verify(task.solve(p), p.answer).correct for p in problems[:500])
    huge = get_task("arithmetic", min_ops=1, max_ops=8, max_operand=9999, ops="+-*")
    assert huge.can_make(10**9)  # by the lower bound, without counting 1e37 expressions
