import json

import pytest

from sftdpo.experts import ProgramExpert
from sftdpo.tasks import get_task


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
    with pytest.raises(ValueError, match="cannot make 500 distinct problems"):
        get_task("arithmetic", min_ops=1, max_ops=1, max_operand=3).problems(500, seed=0)
