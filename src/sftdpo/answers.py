"""Numbers as people write them, and final-answer lines: parse to the exact value or say why not.

A number is read to an exact `Fraction`, never guessed:

- signs `-`, `+` and the Unicode minus `−` (and the other dashes used as one: `‒ – ﹣ －`);
- digits grouped by commas, spaces, thin or no-break spaces or apostrophes in threes (`1,234`,
  `1 234`, `1 234`, `1'234`); a group that is not three digits (`1,5`, `12,34`) is ambiguous and
  rejected;
- a decimal point, also without a leading digit (`.5`) or trailing digits (`7.`);
- a fraction `3/4` (or `3⁄4`, `½`) and a mixed number `1 1/2` (`1½`), kept exact (`1/3` stays `1/3`);
- around the number: currency (`$`, `€`, `£`, `USD`), a percent sign (`25%` reads as 25, the
  GSM8K convention) and words (`18 dollars`, `x = 5`), as long as no other digit is there: `5 and 3`,
  `2+3=5` or `1.2.3` are rejected, not read as one of their numbers.

`canonical(value)` is the pipeline's own text of a value: `12`, `-0.5`, `1/3` (a fraction only when
no finite decimal is exact). `ANSWER_PATTERNS` are the final-answer conventions the importer knows
(`collect.files.answer_pattern`): `####` (the pipeline's own, `#### 18`), `A:` (`A: 18`), `boxed`
(`\\boxed{18}`) and `answer is` (`The answer is 18.`); any other value is a regular expression whose
group `answer` holds the number.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

MINUS = "-\u2212\u2012\u2013\ufe63\uff0d"  # hyphen-minus, minus sign, figure dash, en dash, small/fullwidth minus
GROUP = ",'\u2019 \u00a0\u2009\u202f"  # comma, apostrophes, space, no-break space, thin space, narrow no-break space
SLASH = "/\u2044\u2215"  # solidus, fraction slash, division slash
_SIGN = "[+" + re.escape(MINUS) + "]"


def _number_regex(group: str, mixed: bool) -> re.Pattern:
    """One number: [sign][currency] (mixed number | fraction | decimal | integer), not after a letter, digit or dot."""
    integer = rf"(?:\d{{1,3}}(?:[{re.escape(group)}]\d{{3}})+(?![0-9])|\d+)"
    return re.compile(
        rf"(?<![\w.])(?P<sign>{_SIGN})?(?:[$€£¥] ?)?"
        r"(?:"
        + (rf"(?P<whole>\d+)[ \u00a0](?P<mnum>\d+)[{SLASH}](?P<mden>\d+)|" if mixed else "")
        + rf"(?P<num>\d+)[{SLASH}](?P<den>\d+)"
        rf"|(?P<int>{integer})?(?P<frac>\.\d+)"
        rf"|(?P<int2>{integer})\.?"
        r")(?![0-9])"
    )


# A whole answer: every grouping; free text (the last-number fallback): no plain-space grouping or mixed numbers,
# so "on day 5 100 people came" is not read as 5100.
NUMBER = _number_regex(GROUP, mixed=True)
NUMBER_IN_TEXT = _number_regex(GROUP.replace(" ", ""), mixed=False)
_DIGIT = re.compile(r"[0-9]")
DECIMAL_COMMA = re.compile(r"(?<![0-9])\d{1,3}(?:,\d{1,2}|,\d{4,})(?![0-9])")


class NumberError(ValueError):
    """The text holds no number, several, or one written ambiguously; the message says which, `kind` in a word."""

    def __init__(self, message: str, kind: str = "ambiguous"):
        super().__init__(message)
        self.kind = kind  # none | several | ambiguous | zero_division


def _value(match: re.Match) -> Fraction:
    g = match.groupdict()
    sign = -1 if g["sign"] and g["sign"].strip() in MINUS else 1

    def integer(text: str) -> int:
        return int(re.sub(f"[{GROUP}]", "", text))

    if g.get("whole") is not None:
        den = int(g["mden"])
        if den == 0:
            raise NumberError(f"{match.group(0)!r} divides by zero", "zero_division")
        return sign * (int(g["whole"]) + Fraction(int(g["mnum"]), den))
    if g["num"] is not None:
        den = int(g["den"])
        if den == 0:
            raise NumberError(f"{match.group(0)!r} divides by zero", "zero_division")
        return sign * Fraction(int(g["num"]), den)
    if g["frac"] is not None:
        whole = integer(g["int"]) if g["int"] else 0
        return sign * (whole + Fraction(g["frac"][1:]) / 10 ** len(g["frac"][1:]))
    return sign * Fraction(integer(g["int2"]))


def _vulgar(text: str) -> str:
    """Vulgar fractions as a person types them: `½` -> `1/2`, `1½` -> the mixed number `1 1/2`."""
    if not any("\u00bc" <= ch <= "\u00be" or "\u2150" <= ch <= "\u215e" for ch in text):
        return text
    out = []
    for ch in text:
        if "\u00bc" <= ch <= "\u00be" or "\u2150" <= ch <= "\u215e":
            value = Fraction(unicodedata.numeric(ch)).limit_denominator(10)
            space = " " if out and out[-1][-1:].isdigit() else ""  # 1½ -> 1 1/2; −¾ -> −3/4
            out.append(f"{space}{value.numerator}/{value.denominator}")
        else:
            out.append(ch)
    return "".join(out).strip()


def find_numbers(text: str) -> list[tuple[re.Match, Fraction]]:
    """Every number in free text, in order, with its value (ambiguous ones left out)."""
    out = []
    for match in NUMBER_IN_TEXT.finditer(text or ""):
        try:
            out.append((match, _value(match)))
        except NumberError:
            continue
    return out


def parse_number(text: str | None) -> Fraction:
    """The one number in `text` (currency, percent and words around it allowed), or NumberError saying why not."""
    if text is None or not str(text).strip():
        raise NumberError("empty: no number", "none")
    text = _vulgar(str(text).strip())
    if re.search(r"\d[eE][+-]?\d", text):
        raise NumberError(f"{text!r}: exponent notation is not read; write the number out")
    ambiguous = DECIMAL_COMMA.search(text)
    if ambiguous:
        raise NumberError(
            f"{text!r}: {ambiguous.group(0)!r} is ambiguous (a decimal comma or a misplaced thousands "
            "separator); write a decimal point (1.5) or groups of three digits (1,500)"
        )
    matches = list(NUMBER.finditer(text))
    if not matches:
        raise NumberError(f"{text!r} holds no number", "none")
    if len(matches) > 1:
        shown = ", ".join(repr(m.group(0).strip()) for m in matches[:4])
        raise NumberError(f"{text!r} holds {len(matches)} numbers ({shown}); the answer must be one number", "several")
    match = matches[0]
    rest = text[: match.start()] + " " + text[match.end() :]
    if _DIGIT.search(rest):
        raise NumberError(f"{text!r}: digits outside the number {match.group(0).strip()!r}")
    return _value(match)


def canonical(value: Fraction) -> str:
    """The pipeline's text of a value: `12`, `-0.25`, or `1/3` when no finite decimal is exact."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    digits = abs(value.numerator) * 10**places // value.denominator
    text = str(digits).rjust(places + 1, "0")
    text = f"{text[:-places]}.{text[-places:]}".rstrip("0").rstrip(".")
    return ("-" if value < 0 else "") + text


def normalise(text: str | None) -> str | None:
    """`canonical(parse_number(text))`, or None when the text is not one readable number."""
    try:
        return canonical(parse_number(text))
    except NumberError:
        return None


# -- final-answer lines --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnswerPattern:
    """A final-answer convention: `regex` finds it (group `answer`); `inline` replaces it with the number
    where it stands (a `\\boxed{}` inside a sentence), otherwise the match is removed from its line."""

    name: str
    regex: re.Pattern
    describe: str
    inline: bool = False


ANSWER_PATTERNS = {
    "####": AnswerPattern("####", re.compile(r"^[ \t]*####[ \t]*(?P<answer>.*?)[ \t]*$", re.M), "'#### <number>'"),
    "A:": AnswerPattern("A:", re.compile(r"^[ \t]*A:[ \t]*(?P<answer>.*?)[ \t]*$", re.M), "'A: <number>'"),
    "boxed": AnswerPattern(
        "boxed", re.compile(r"\\boxed\{(?P<answer>(?:[^{}]|\{[^{}]*\})*)\}"), "'\\boxed{<number>}'", inline=True
    ),
    "answer is": AnswerPattern(
        "answer is",
        re.compile(r"(?i)\b(?:the )?(?:final )?answer is:?[ \t]*(?P<answer>[^\n]*?)[ \t.]*$", re.M),
        "'The answer is <number>'",
    ),
}


def answer_pattern(spec: str | None) -> AnswerPattern:
    """A preset by name, or a regular expression with a group named `answer`."""
    spec = spec or "####"
    if spec in ANSWER_PATTERNS:
        return ANSWER_PATTERNS[spec]
    try:
        regex = re.compile(spec, re.M)
    except re.error as err:
        raise ValueError(
            f"collect.files.answer_pattern: {spec!r} is neither a preset {sorted(ANSWER_PATTERNS)} "
            f"nor a regular expression ({err})"
        ) from None
    if "answer" not in regex.groupindex:
        raise ValueError(
            f"collect.files.answer_pattern: the regular expression {spec!r} needs a group named answer, "
            "e.g. '^Answer: (?P<answer>.+)$'"
        )
    return AnswerPattern(spec, regex, "collect.files.answer_pattern")


@dataclass(frozen=True)
class FinalAnswer:
    value: Fraction
    raw: str  # the text of the answer as written
    body: str  # the completion without its answer line (an inline answer replaced by its text)


def final_answer(completion: str, pattern: AnswerPattern) -> FinalAnswer | None:
    """The last answer in `completion` written as `pattern` says (None: there is none).

    Raises NumberError when the answer is there but is not one readable number.
    """
    matches = list(pattern.regex.finditer(completion))
    if not matches:
        return None
    match = matches[-1]
    raw = match.group("answer").strip()
    inner = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", raw.strip("$ "))  # LaTeX \frac{1}{4}
    inner = re.sub(r"\\text\{([^{}]*)\}", r"\1", inner).replace("\\%", "%").replace("\\$", "$")
    value = parse_number(re.sub(r"\\[,!; ]", "", inner))
    start, end = match.span()
    line_start = completion.rfind("\n", 0, start) + 1
    line_end = completion.find("\n", end)
    line_end = len(completion) if line_end < 0 else line_end
    before, after = completion[line_start:start], completion[end:line_end]
    # The answer's line goes when nothing but the answer (and `$`/punctuation) was on it.
    line = None if re.fullmatch(r"[\s$.:]*", before + after) else before + (raw if pattern.inline else "") + after
    lines = completion[:line_start].splitlines() + ([line] if line is not None else [])
    lines += completion[line_end + 1 :].splitlines() if line_end < len(completion) else []
    if not pattern.inline:  # earlier answer lines of the same kind go too: one answer line, at the end
        lines = [text for text in lines if not pattern.regex.fullmatch(text)]
    return FinalAnswer(value, raw, "\n".join(text.rstrip() for text in lines).strip())
