"""Number forms (sftdpo.answers), property-based: a value written every way a person writes it reads back
as exactly that value (in a `#### n` line, in the verifier, through the importer), and an ambiguous form
is rejected with a reason, never read as another number."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftdpo.answers import (
    ANSWER_PATTERNS,
    NumberError,
    answer_pattern,
    canonical,
    final_answer,
    parse_number,
)
from sftdpo.importers import convert_record
from sftdpo.records import Record
from sftdpo.tasks import get_task
from sftdpo.tasks.gsm8k import extract_answer

SEPARATORS = [",", " ", "\u2009", "\u00a0", "\u202f", "'"]
MINUSES = ["-", "\u2212", "\u2013"]
GSM8K = get_task("gsm8k")


def grouped(digits: str, sep: str) -> str:
    head = len(digits) % 3 or 3
    return sep.join([digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)])


@st.composite
def written(draw):
    """(value, text): a number and one way of writing it."""
    kind = draw(st.sampled_from(["integer", "decimal", "fraction"]))
    negative = draw(st.booleans())
    minus = draw(st.sampled_from(MINUSES))
    sign = minus if negative else draw(st.sampled_from(["", "+"]))
    whole = draw(st.integers(0, 10**9))
    sep = draw(st.sampled_from(["", *SEPARATORS]))
    whole_text = grouped(str(whole), sep) if sep else str(whole)
    if kind == "integer":
        value = Fraction(whole)
        body = whole_text + draw(st.sampled_from(["", ".", ".0", ".00"]))
    elif kind == "decimal":
        places = draw(st.integers(1, 4))
        fraction = draw(st.integers(0, 10**places - 1))
        value = whole + Fraction(fraction, 10**places)
        digits = str(fraction).rjust(places, "0")
        body = ("" if whole == 0 and draw(st.booleans()) else whole_text) + "." + digits
    else:
        den = draw(st.integers(2, 12))
        num = draw(st.integers(1, 50))
        value = Fraction(num, den)
        if value.denominator != 1 and draw(st.booleans()) and num > den:
            mixed_whole, rest = divmod(num, den)
            body = f"{mixed_whole} {rest}/{den}" if rest else str(mixed_whole)
        else:
            body = f"{num}{draw(st.sampled_from(['/', chr(0x2044)]))}{den}"
    value = -value if negative else value
    wrap = draw(st.sampled_from(["{}", "${}", "{} dollars", "{}%", "{} cm", "x = {}", "USD {}", "{}."]))
    if wrap == "${}" and sign:
        text = f"{sign}${body}"
    elif wrap == "{}." and body.endswith("."):
        text = sign + body
    else:
        text = wrap.format(sign + body)
    return value, text


@settings(max_examples=400, deadline=None)
@given(written())
def test_every_way_of_writing_a_number_reads_back_exactly(case):
    value, text = case
    assert parse_number(text) == value, text
    assert parse_number(canonical(value)) == value
    assert extract_answer(f"Some step.\n#### {text}") == (canonical(value), "answer_line")
    verdict = GSM8K.verify(f"Some step.\n#### {text}", canonical(value))
    assert verdict.correct and verdict.prediction == canonical(value)
    assert not GSM8K.verify(f"Some step.\n#### {text}", canonical(value + 1)).correct


@settings(max_examples=200, deadline=None)
@given(written(), st.sampled_from(["####", "A:", "boxed", "answer is"]))
def test_the_importer_writes_the_exact_value_into_the_completion(case, preset):
    value, text = case
    line = {
        "####": f"#### {text}",
        "A:": f"A: {text}",
        "boxed": f"$\\boxed{{{text}}}$",
        "answer is": f"The answer is {text}",
    }
    completion = f"First step = <<2*3=6>>6.\nSecond step.\n{line[preset]}"
    record = Record("f.jsonl", "line", 1, 0, {"prompt": "Q?", "completion": completion})
    row = convert_record(
        record, fmt="columns", columns={}, task=GSM8K, strip=True, id_prefix="f", pattern=answer_pattern(preset)
    )
    assert row.answer == canonical(value)
    assert row.completion == f"First step = 6.\nSecond step.\n#### {canonical(value)}"
    assert row.difficulty == "1-2"  # two steps: the answer line is not one
    assert GSM8K.verify(row.completion, row.answer).correct


@given(st.integers(1, 999), st.integers(0, 99), st.sampled_from([",", "."]))
def test_a_group_that_is_not_three_digits_is_rejected(whole, part, sep):
    text = f"{whole},{part}" if sep == "," else f"{whole}.{part:02d}.{part}"
    with pytest.raises(NumberError):
        parse_number(text)
    assert extract_answer(f"step\n#### {text}") == (None, "unreadable_answer_line")


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from([" and ", " or ", " + ", "-", " to "]))
def test_two_numbers_are_not_one_answer(a, b, joiner):
    text = f"{a}{joiner}{b}"
    with pytest.raises(NumberError, match="numbers"):
        parse_number(text)
    assert not GSM8K.verify(f"#### {text}", str(b)).correct


@pytest.mark.parametrize(
    "text, value",
    [
        (".5", "0.5"),
        ("3/4", "0.75"),
        ("\u22125", "-5"),
        ("1 234", "1234"),
        ("1\u2009234", "1234"),
        ("1/5", "0.2"),
        ("1/3", "1/3"),
        ("-2/6", "-1/3"),
        ("1 1/2", "1.5"),
        ("$1,234.50", "1234.5"),
        ("25%", "25"),
        ("\u2212$5", "-5"),
        ("7.", "7"),
        ("1\u00bd", "1.5"),
        ("\u2212\u00be", "-0.75"),
        ("\u2153", "1/3"),
    ],
)
def test_the_forms_of_the_issue(text, value):
    assert canonical(parse_number(text)) == value


@pytest.mark.parametrize(
    "text, reason",
    [
        ("1,5", "ambiguous"),
        ("1,2345", "ambiguous"),
        ("1e3", "exponent"),
        ("seven", "holds no number"),
        ("", "empty"),
        ("1/0", "divides by zero"),
        ("2+3=5", "3 numbers"),
        ("1.2.3", "digits outside"),
    ],
)
def test_unreadable_forms_say_why(text, reason):
    with pytest.raises(NumberError, match=reason):
        parse_number(text)


def test_answer_patterns_remove_the_answer_line_and_keep_inline_answers():
    found = final_answer("a\n#### 5\nb\n#### 6", ANSWER_PATTERNS["####"])
    assert (found.value, found.body) == (6, "a\nb")
    found = final_answer("So she has \\boxed{18} apples.", ANSWER_PATTERNS["boxed"])
    assert (found.value, found.body) == (18, "So she has 18 apples.")
    found = final_answer("5+13=18. The answer is 18.", ANSWER_PATTERNS["answer is"])
    assert (found.value, found.body) == (18, "5+13=18.")
    custom = answer_pattern(r"^Final: (?P<answer>.+)$")
    assert final_answer("x\nFinal: 1/4", custom).value == Fraction(1, 4)
    with pytest.raises(ValueError, match="needs a group named answer"):
        answer_pattern(r"^Final: (.+)$")
    with pytest.raises(ValueError, match="neither a preset"):
        answer_pattern("(")
