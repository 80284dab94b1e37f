"""Import demonstrations from files (`collect.expert: files`): JSONL, JSON, CSV and parquet.

Formats (what each row must hold; `columns` renames a field to the file's own column name):

- `gsm8k`:   `question`, `answer` (a worked solution whose last line is `#### <number>`);
- `alpaca`:  `instruction`, optional `input`, `output`;
- `chat`:    `messages`, a list of `{role, content}`: an optional system message, one user message, one
             assistant message (the demonstration);
- `columns`: `prompt`, `completion`, optional `answer`, `id`, `difficulty`: map them with `columns`
             (e.g. `columns: {prompt: problem, completion: solution}`).

Every format may also map `id` (a column named `id` is used as is; otherwise ids are
`<file stem>-<row index>`), `answer` (otherwise it is read from the completion by the task, so the
verifier then checks the completion's form and steps only) and `difficulty` (otherwise the task's rule
on the completion). `strip_annotations` removes GSM8K calculator annotations (`<<48/2=24>>`) from
`gsm8k` solutions.

Rows are numbered across the files in the order given (the first `limit` rows only, when set) and
shard `s` of `n` takes the rows whose number is `s` modulo `n`. A row that cannot be read (invalid
JSON, a missing or empty field, a wrong type, no answer the task can read) is a *bad row*: it is
reported with its file, line (parquet: row) and field, logged, and counted in the shard summary, never
dropped silently; more than `max_bad_fraction` bad rows in a shard stops the shard. A JSON file whose
array cannot be parsed stops the import at the line of the syntax error.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sftdpo.tasks import Problem, Task, solution_difficulty
from sftdpo.tasks.gsm8k import ANSWER_LINE, extract_answer, format_solution, normalise_number

log = logging.getLogger(__name__)

FORMATS = ("gsm8k", "alpaca", "chat", "columns")
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
FIELDS = {
    "gsm8k": ("question", "answer"),
    "alpaca": ("instruction", "input", "output"),
    "chat": ("messages",),
    "columns": ("prompt", "completion"),
}
OPTIONAL = ("id", "answer", "difficulty")
MAX_REPORTED = 10_000


class ImportFailure(ValueError):
    """A file cannot be read at all, or a shard has too many bad rows."""


class BadRow(ValueError):
    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


@dataclass
class Record:
    """One raw row of a file: its data, or the error that made it unreadable."""

    file: str
    unit: str  # "line" or "row"
    number: int  # 1-based line (JSONL, JSON, CSV) or row (parquet)
    index: int  # 0-based position among the file's rows
    data: dict[str, Any] | None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}, {self.unit} {self.number}"


@dataclass
class ImportedRow:
    id: str
    prompt: str
    completion: str
    answer: str
    difficulty: str
    source: dict[str, Any] = field(default_factory=dict)


# -- reading files --------------------------------------------------------------------------------
def read_records(path: str) -> Iterator[Record]:
    """The rows of one file, by suffix; unreadable rows come back with `error` set."""
    suffix = Path(path).suffix.lower()
    if not Path(path).is_file():
        raise ImportFailure(f"collect.files.paths: {path} does not exist (working directory {Path.cwd()})")
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl(path)
    elif suffix == ".json":
        yield from _json_array(path)
    elif suffix == ".csv":
        yield from _csv(path)
    elif suffix == ".parquet":
        yield from _parquet(path)
    else:
        raise ImportFailure(f"collect.files.paths: {path}: unknown file type {suffix!r}; use one of {list(SUFFIXES)}")


def _object(value: Any) -> tuple[dict | None, str | None]:
    if isinstance(value, dict):
        return value, None
    return None, f"expected a JSON object, got {type(value).__name__}"


def _jsonl(path: str) -> Iterator[Record]:
    index = 0
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data, error = _object(json.loads(line))
            except json.JSONDecodeError as err:
                data, error = None, f"not valid JSON ({err.msg}, column {err.colno})"
            yield Record(path, "line", number, index, data, error)
            index += 1


def _json_array(path: str) -> Iterator[Record]:
    """A top-level JSON array of objects, each with the line it starts on."""
    text = Path(path).read_text(encoding="utf-8")
    decoder = json.JSONDecoder()

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip(0)
    if not text[pos:pos + 1] == "[":
        raise ImportFailure(f"{path}: expected a JSON array of objects at line 1; convert the file to JSONL "
                            "(one object a line) or to an array")
    pos, line, counted, index = skip(pos + 1), 1, 0, 0
    if text[pos:pos + 1] == "]":
        return
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise ImportFailure(f"{path}, line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}); "
                                f"{index} rows before it were read, the rest of the array cannot be") from None
        data, error = _object(value)
        yield Record(path, "line", line, index, data, error)
        index += 1
        pos = skip(end)
        if text[pos:pos + 1] == ",":
            pos = skip(pos + 1)
        elif text[pos:pos + 1] == "]":
            return
        else:
            line += text.count("\n", counted, pos)
            raise ImportFailure(f"{path}, line {line}: expected ',' or ']' after the array item that starts "
                                f"at line {line}; the rest of the array cannot be read")


def _csv(path: str) -> Iterator[Record]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for index, row in enumerate(reader):
            error = None
            if None in row:
                error = f"{len(header) + len(row[None])} fields, the header has {len(header)}"
            elif any(v is None for v in row.values()):
                error = f"{sum(v is not None for v in row.values())} fields, the header has {len(header)}"
            yield Record(path, "line", reader.line_num, index, None if error else dict(row), error)


def _parquet(path: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for index, row in enumerate(table.to_pylist()):
        yield Record(path, "row", index + 1, index, row)


# -- one record to one demonstration ---------------------------------------------------------------
def _text(data: dict[str, Any], name: str, columns: dict[str, str], *, required: bool = True) -> str | None:
    column = columns.get(name, name)
    if column not in data or data[column] is None:
        if not required:
            return None
        raise BadRow(name, f"missing (columns present: {sorted(data)[:20]})" if column == name
                     else f"missing column {column!r} (mapped by columns.{name}; present: {sorted(data)[:20]})")
    value = data[column]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name in ("answer", "id", "difficulty"):
        value = str(value)
    if not isinstance(value, str):
        raise BadRow(name, f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise BadRow(name, "empty")
    return value


def _chat(data: dict[str, Any], columns: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
    column = columns.get("messages", "messages")
    messages = data.get(column)
    if hasattr(messages, "tolist"):
        messages = messages.tolist()
    if not isinstance(messages, list) or not messages:
        raise BadRow("messages", "missing or not a non-empty list of {role, content}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise BadRow("messages", f"message {i} is not a {{role, content}} object with string values")
    roles = [m["role"] for m in messages]
    extra: dict[str, Any] = {}
    if roles[0] == "system":
        extra["system"] = messages[0]["content"]
        messages, roles = messages[1:], roles[1:]
    if roles != ["user", "assistant"]:
        raise BadRow("messages", f"roles {roles}: expected an optional system message, one user and one assistant "
                                 "message (multi-turn conversations are not supported)")
    prompt, completion = messages[0]["content"], messages[1]["content"]
    for name, value in (("messages[user]", prompt), ("messages[assistant]", completion)):
        if not value.strip():
            raise BadRow(name, "empty")
    return prompt, completion, extra


def gsm8k_fields(data: dict[str, Any], columns: dict[str, str]) -> tuple[str, str]:
    """(question, worked solution) of a GSM8K row, or BadRow naming the field."""
    question = _text(data, "question", columns)
    solution = _text(data, "answer", columns)
    if not ANSWER_LINE.search(solution):
        raise BadRow("answer", "no '#### <number>' answer line")
    if extract_answer(solution)[1] != "answer_line":
        raise BadRow("answer", "the '####' line holds no number")
    return question, solution


def bad_row_message(record: Record, err: BadRow) -> str:
    return record.where + (f", field {err.field!r}" if err.field else "") + f": {err.reason}"


def convert_record(record: Record, *, fmt: str, columns: dict[str, str], task: Task, strip: bool,
                   id_prefix: str) -> ImportedRow:
    """The demonstration in one record, or BadRow naming the field."""
    if record.error:
        raise BadRow(None, record.error)
    data = record.data or {}
    answer = _text(data, "answer", columns, required=False) if fmt != "gsm8k" else None
    extra: dict[str, Any] = {}
    if fmt == "gsm8k":
        question, solution = gsm8k_fields(data, columns)
        answer = extract_answer(solution)[0]
        completion = format_solution(solution, strip=strip)
        make_prompt = getattr(task, "make_prompt", None)
        prompt = make_prompt(question) if callable(make_prompt) else question.strip()
    elif fmt == "alpaca":
        instruction = _text(data, "instruction", columns)
        extra_input = _text(data, "input", columns, required=False) or ""
        completion = _text(data, "output", columns)
        prompt = instruction.strip() + (f"\n\n{extra_input.strip()}" if extra_input.strip() else "")
    elif fmt == "chat":
        prompt, completion, extra = _chat(data, columns)
    else:
        prompt, completion = _text(data, "prompt", columns), _text(data, "completion", columns)
    if answer is None:
        answer = task.extract_answer(completion)
        if answer is None:
            raise BadRow("answer", f"no answer the {task.name} task can read in the completion (end it with "
                                   "'#### <answer>' or map an answer column with columns.answer)")
    elif normalise_number(answer) is not None and task.name == "gsm8k":
        answer = normalise_number(answer)
    row_id = _text(data, "id", columns, required=False) if "id" in columns or "id" in data else None
    difficulty = _text(data, "difficulty", columns, required=False) if "difficulty" in columns else None
    return ImportedRow(
        id=row_id.strip() if row_id and row_id.strip() else f"{id_prefix}-{record.index:06d}",
        prompt=prompt.strip(),
        completion=completion.strip(),
        answer=str(answer).strip(),
        difficulty=difficulty.strip() if difficulty and difficulty.strip() else solution_difficulty(task, completion),
        source={"file": record.file, record.unit: record.number, "format": fmt, **extra},
    )


# -- the expert -------------------------------------------------------------------------------------
class FilesExpert:
    """Demonstrations read from files; `shard_problems` replaces the task's problem generator."""

    name = "files"
    keep_failures = True

    def __init__(self, task: Task, *, paths: list[str], format: str = "gsm8k", columns: dict[str, str] | None = None,
                 limit: int | None = None, strip_annotations: bool = True, max_bad_fraction: float = 0.1,
                 seed: int = 0):
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
            raise ValueError(f"collect.files.columns: {unknown} are not fields of format {format!r}; "
                             f"map some of {sorted(known)}")
        stems = [Path(p).stem for p in paths]
        dupes = sorted({s for s in stems if stems.count(s) > 1})
        if dupes:
            raise ValueError(f"collect.files.paths: several files are named {dupes}; row ids (<file stem>-<row>) "
                             "would collide: rename them or map an id column")
        self.task, self.paths, self.format, self.columns = task, list(paths), format, columns
        self.limit, self.strip, self.max_bad_fraction, self.seed = limit, strip_annotations, max_bad_fraction, seed
        self.completions: dict[str, tuple[str, dict[str, Any]]] = {}
        self.bad: list[dict[str, Any]] = []
        self.n_rows = 0

    def records(self) -> Iterator[tuple[int, Record]]:
        """(row number across files, record), the first `limit` rows only."""
        number = 0
        for path in self.paths:
            for record in read_records(path):
                if self.limit is not None and number >= self.limit:
                    return
                yield number, record
                number += 1

    def shard_problems(self, shard: int, n_shards: int) -> list[Problem]:
        problems, bad, seen = [], [], 0
        for number, record in self.records():
            if number % n_shards != shard:
                continue
            seen += 1
            try:
                row = convert_record(record, fmt=self.format, columns=self.columns, task=self.task, strip=self.strip,
                                     id_prefix=Path(record.file).stem)
            except BadRow as err:
                bad.append({"file": record.file, record.unit: record.number, "field": err.field,
                            "reason": err.reason, "message": bad_row_message(record, err)})
                continue
            self.completions[row.id] = (row.completion, {"source": row.source})
            problems.append(Problem(id=row.id, prompt=row.prompt, answer=row.answer, difficulty=row.difficulty))
        self.bad, self.n_rows = bad, seen
        for item in bad[:MAX_REPORTED]:
            log.warning("bad row: %s", item["message"])
        if bad:
            log.warning("shard %d/%d: %d of %d rows are bad and were not imported", shard, n_shards, len(bad), seen)
        if seen and len(bad) / seen > self.max_bad_fraction:
            first = "\n  ".join(item["message"] for item in bad[:5])
            raise ImportFailure(
                f"collect.files: {len(bad)} of {seen} rows of shard {shard} are bad "
                f"({len(bad) / seen:.1%} > max_bad_fraction {self.max_bad_fraction:.1%}); check collect.files.format "
                f"({self.format!r}) and collect.files.columns. First bad rows:\n  {first}")
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
                "bad_by_reason": dict(sorted(Counter(f"{b['field']}: {b['reason'].split(' (')[0]}"
                                                     for b in self.bad).items())),
                "bad": [b["message"] for b in self.bad[:MAX_REPORTED]],
            }
        }
