"""Import demonstrations from files (`collect.expert: files`): JSONL, JSON, CSV and parquet.

Formats (what each row must hold; `columns` renames a field to the file's own column name):

- `gsm8k`:   `question`, `answer` (a worked solution whose last line is `#### <number>`);
- `alpaca`:  `instruction`, optional `input`, `output`;
- `chat`:    `messages`, a list of `{role, content}`: an optional system message, then user and assistant
             messages taking turns, ending with an assistant message. The final exchange is the demonstration
             (prompt, completion; the verifier reads the final answer); the system message and earlier turns
             are kept as its context (`meta.context`): convert puts them before the prompt, and SFT's loss
             covers every assistant turn;
- `columns`: `prompt`, `completion`, optional `answer`, `id`, `difficulty`: map them with `columns`
             (e.g. `columns: {prompt: problem, completion: solution}`).

Every format may also map `id` (a column named `id` is used as is; otherwise ids are
`<file stem>-<row index>`), `answer` and `difficulty` (otherwise the task's rule on the completion).

The final answer of every completion is found by `answer_pattern` (sftdpo.answers: `####` by default;
presets `A:`, `boxed`, `answer is`, or a regular expression with a group `answer`), read exactly (a
number that is ambiguous or not one number is a bad row, never a guess) and written back as the
pipeline's own last line `#### <canonical number>`, so steps are counted without it. A completion
without such an answer is a bad row, unless an `answer` column is mapped and the completion's last
number is that answer; a mapped answer that disagrees with the completion's answer line is a bad row.
`strip_annotations` removes GSM8K calculator annotations (`<<48/2=24>>`) in every format.

Rows are numbered across the files in the order given (the first `limit` rows only, when set) and
shard `s` of `n` takes the rows whose number is `s` modulo `n`. A row that cannot be read (invalid
JSON, a missing or empty field, a wrong type, no answer the task can read) is a *bad row*: it is
reported with its file, line (parquet: row) and field, logged, and counted in the shard summary, never
dropped silently; more than `max_bad_fraction` bad rows in a shard stops the shard. A JSON file whose
array cannot be parsed stops the import at the line of the syntax error.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sftdpo.answers import (
    ANSWER_PATTERNS,
    AnswerPattern,
    NumberError,
    answer_pattern,
    canonical,
    final_answer,
    find_numbers,
    parse_number,
)
from sftdpo.experts import Expert
from sftdpo.records import (
    ENCODING_ERRORS,
    BadRow,
    ImportFailure,
    Record,
    bad_row_message,
    read_records,
    text_field,
)
from sftdpo.tasks import Problem, Task
from sftdpo.tasks.gsm8k import strip_annotations

log = logging.getLogger(__name__)

FORMATS = ("gsm8k", "alpaca", "chat", "columns")
FIELDS = {
    "gsm8k": ("question", "answer"),
    "alpaca": ("instruction", "input", "output"),
    "chat": ("messages",),
    "columns": ("prompt", "completion"),
}
OPTIONAL = ("id", "answer", "difficulty")
MAX_REPORTED = 10_000


@dataclass
class ImportedRow:
    id: str
    prompt: str
    completion: str
    answer: str
    difficulty: str
    source: dict[str, Any] = field(default_factory=dict)
    context: list[dict[str, str]] = field(default_factory=list)  # messages before the prompt (chat format)


# -- one record to one demonstration ---------------------------------------------------------------
def _chat(data: dict[str, Any], columns: dict[str, str]) -> tuple[str, str, list[dict[str, str]]]:
    """(final user message, final assistant message, the messages before the final user message)."""
    column = columns.get("messages", "messages")
    messages = data.get(column)
    if hasattr(messages, "tolist"):
        messages = messages.tolist()
    if not isinstance(messages, list) or not messages:
        raise BadRow("messages", "missing or not a non-empty list of {role, content}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRow(f"messages[{i}]", "not a {role, content} object")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise BadRow(f"messages[{i}].{key}", "missing" if message.get(key) is None else "not a string")
    start = 1 if messages[0]["role"] == "system" else 0
    for i, message in enumerate(messages[start:], start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise BadRow(
                f"messages[{i}].role",
                f"{message['role']!r} where {expected!r} belongs: expected an optional system message, then user and "
                "assistant messages taking turns",
            )
        if not message["content"].strip():
            raise BadRow(f"messages[{i}].content", f"empty {expected} message")
    if len(messages) - start < 2 or messages[-1]["role"] != "assistant":
        raise BadRow("messages", "the conversation does not end with an assistant message (the demonstration)")
    context = [{"role": m["role"], "content": m["content"]} for m in messages[:-2]]
    return messages[-2]["content"], messages[-1]["content"], context


COMPLETION_FIELD = {"gsm8k": "answer", "alpaca": "output", "chat": "messages[assistant]", "columns": "completion"}
PRESETS_HINT = (
    "set collect.files.answer_pattern to the file's convention ('####', 'A:', 'boxed', 'answer is', or a "
    "regular expression with a group named answer)"
)


def convert_record(
    record: Record,
    *,
    fmt: str,
    columns: dict[str, str],
    task: Task,
    strip: bool,
    id_prefix: str,
    pattern: AnswerPattern | None = None,
) -> ImportedRow:
    """The demonstration in one record, or BadRow naming the field.

    The completion's final answer is found with `pattern` (default `#### n`), read exactly, and written
    back as the pipeline's own last line `#### <canonical number>`; annotations are stripped (`strip`).
    """
    if record.error:
        raise BadRow(None, record.error)
    pattern = pattern or ANSWER_PATTERNS["####"]
    data = record.data or {}
    mapped = text_field(data, "answer", columns, required=False) if fmt != "gsm8k" else None
    context: list[dict[str, str]] = []
    if fmt == "gsm8k":
        question, completion = text_field(data, "question", columns), text_field(data, "answer", columns)
        prompt = task.make_prompt(question)
    elif fmt == "alpaca":
        instruction = text_field(data, "instruction", columns)
        extra_input = text_field(data, "input", columns, required=False) or ""
        completion = text_field(data, "output", columns)
        prompt = instruction.strip() + (f"\n\n{extra_input.strip()}" if extra_input.strip() else "")
    elif fmt == "chat":
        prompt, completion, context = _chat(data, columns)
    else:
        prompt, completion = text_field(data, "prompt", columns), text_field(data, "completion", columns)
    if strip:
        completion = strip_annotations(completion)
    where = COMPLETION_FIELD[fmt]
    try:
        found = final_answer(completion, pattern)
    except NumberError as err:
        detail = "holds no number" if err.kind == "none" else f"is not one number: {err}"
        raise BadRow("answer", f"the {pattern.describe} answer in {where!r} {detail}") from None
    value = found.value if found else None
    if mapped is not None:
        try:
            given = parse_number(mapped)
        except NumberError as err:
            raise BadRow("answer", f"the answer column is not one number: {err}") from None
        if value is None:
            # No answer line: the completion must end on the answer column's number, which becomes its answer line.
            numbers = find_numbers(completion)
            if not numbers or numbers[-1][1] != given:
                last = repr(numbers[-1][0].group(0)) if numbers else "no number"
                raise BadRow(
                    "answer",
                    f"{where!r} has no {pattern.describe} answer line and its last number ({last}) is not the "
                    f"answer column's {mapped.strip()!r}; {PRESETS_HINT}",
                )
        elif value != given:
            raise BadRow(
                "answer",
                f"the answer column says {mapped.strip()!r} but {where!r} ends with {found.raw!r}",
            )
        value = given
    if value is None:
        hint = PRESETS_HINT + ("" if fmt == "gsm8k" else ", or map an answer column with columns.answer")
        raise BadRow("answer", f"no {pattern.describe} answer line in {where!r}; {hint}")
    body = found.body if found else completion.strip()
    completion = "\n".join([*([body] if body else []), f"#### {canonical(value)}"])
    row_id = text_field(data, "id", columns, required=False) if "id" in columns or "id" in data else None
    difficulty = text_field(data, "difficulty", columns, required=False) if "difficulty" in columns else None
    return ImportedRow(
        id=row_id.strip() if row_id and row_id.strip() else f"{id_prefix}-{record.index:06d}",
        prompt=prompt.strip(),
        completion=completion,
        answer=canonical(value),
        difficulty=difficulty.strip() if difficulty and difficulty.strip() else task.difficulty(completion),
        source={"file": record.file, record.unit: record.number, "format": fmt},
        context=context,
    )


_answer_pattern = answer_pattern


# -- the expert -------------------------------------------------------------------------------------
class FilesExpert(Expert):
    """Demonstrations read from files; `shard_problems` replaces the task's problem generator."""

    name = "files"
    keep_failures = True

    def __init__(
        self,
        task: Task,
        *,
        paths: list[str],
        format: str = "gsm8k",
        columns: dict[str, str] | None = None,
        limit: int | None = None,
        strip_annotations: bool = True,
        max_bad_fraction: float = 0.1,
        answer_pattern: str = "####",
        encoding_errors: str = "quarantine",
        seed: int = 0,
    ):
        if isinstance(paths, str):
            paths = [paths]
        if not paths:
            raise ValueError("collect.files.paths: give at least one file")
        if format not in FORMATS:
            raise ValueError(f"collect.files.format: unknown format {format!r}; use one of {list(FORMATS)}")
        columns = dict(columns or {})
        known = set(FIELDS[format]) | set(OPTIONAL)
        unknown = sorted(set(columns) - known)
        if unknown:
            raise ValueError(
                f"collect.files.columns: {unknown} are not fields of format {format!r}; map some of {sorted(known)}"
            )
        stems = [Path(p).stem for p in paths]
        dupes = sorted({s for s in stems if stems.count(s) > 1})
        if dupes:
            raise ValueError(
                f"collect.files.paths: several files are named {dupes}; row ids (<file stem>-<row>) "
                "would collide: rename them or map an id column"
            )
        self.pattern = _answer_pattern(answer_pattern)
        if encoding_errors not in ENCODING_ERRORS:
            raise ValueError(f"collect.files.encoding_errors: {encoding_errors!r} is not in {list(ENCODING_ERRORS)}")
        self.encoding_errors = encoding_errors
        self.task, self.paths, self.format, self.columns = task, list(paths), format, columns
        self.limit, self.strip, self.max_bad_fraction, self.seed = limit, strip_annotations, max_bad_fraction, seed
        self.completions: dict[str, tuple[str, dict[str, Any]]] = {}
        self.bad: list[dict[str, Any]] = []
        self.n_rows = 0

    def records(self) -> Iterator[tuple[int, Record]]:
        """(row number across files, record), the first `limit` rows only."""
        number = 0
        for path in self.paths:
            for record in read_records(path, "collect.files.paths", self.encoding_errors):
                if self.limit is not None and number >= self.limit:
                    return
                yield number, record
                number += 1

    def shard_problems(self, shard: int, n_shards: int) -> list[Problem]:
        problems, bad, seen, total = [], [], 0, 0
        for number, record in self.records():
            total = number + 1
            if number % n_shards != shard:
                continue
            seen += 1
            try:
                row = convert_record(
                    record,
                    fmt=self.format,
                    columns=self.columns,
                    task=self.task,
                    strip=self.strip,
                    id_prefix=Path(record.file).stem,
                    pattern=self.pattern,
                )
            except BadRow as err:
                bad.append(
                    {
                        "file": record.file,
                        record.unit: record.number,
                        "field": err.field,
                        "reason": err.reason,
                        "message": bad_row_message(record, err),
                    }
                )
                continue
            self.completions[row.id] = (
                row.completion,
                {"source": row.source, **({"context": row.context} if row.context else {})},
            )
            problems.append(Problem(id=row.id, prompt=row.prompt, answer=row.answer, difficulty=row.difficulty))
        self.bad, self.n_rows = bad, seen
        if not seen:
            raise ImportFailure(
                f"collect.files: shard {shard} of collect.shards={n_shards} gets no rows: the files hold {total} "
                f"rows{' (after collect.files.limit)' if self.limit is not None else ''}; lower collect.shards to "
                f"at most {total}"
            )
        for item in bad[:MAX_REPORTED]:
            log.warning("bad row: %s", item["message"])
        if bad:
            log.warning("shard %d/%d: %d of %d rows are bad and were not imported", shard, n_shards, len(bad), seen)
        if seen and len(bad) / seen > self.max_bad_fraction:
            first = "\n  ".join(item["message"] for item in bad[:5])
            raise ImportFailure(
                f"collect.files: {len(bad)} of {seen} rows of shard {shard} are bad "
                f"({len(bad) / seen:.1%} > max_bad_fraction {self.max_bad_fraction:.1%}); check collect.files.format "
                f"({self.format!r}) and collect.files.columns. First bad rows:\n  {first}"
            )
        return problems

    def demonstrate(self, problem: Problem) -> tuple[str, dict[str, Any]]:
        return self.completions[problem.id]

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "files": {
                "paths": self.paths,
                "format": self.format,
                "rows_read": self.n_rows,
                "bad_rows": len(self.bad),
                "bad_by_reason": dict(
                    sorted(Counter(f"{b['field']}: {b['reason'].split(' (')[0]}" for b in self.bad).items())
                ),
                "bad": [b["message"] for b in self.bad[:MAX_REPORTED]],
                "bad_records": [{k: v for k, v in b.items() if k != "message"} for b in self.bad[:MAX_REPORTED]],
            }
        }
