"""Rows of data files with their provenance: JSONL, JSON (array), CSV and parquet.

Every row comes back as a `Record` that knows its file and line (parquet: row), so any stage that
rejects it can say where it was: `bad_row_message` gives "file, line N, field 'x': reason". A row that
cannot be read at all (invalid JSON, a wrong field count) carries `error` instead of data.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


class ImportFailure(ValueError):
    """A file cannot be read at all (missing, unknown type, a broken JSON array), or too many of its rows are bad."""


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


def read_records(path: str, setting: str = "") -> Iterator[Record]:
    """The rows of one file, by suffix; unreadable rows come back with `error` set.

    `setting` names the config key the path came from, for the error of a missing or unknown file.
    """
    suffix = Path(path).suffix.lower()
    where = f"{setting}: {path}" if setting else str(path)
    if not Path(path).is_file():
        raise ImportFailure(f"{where} does not exist (working directory {Path.cwd()})")
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl(path)
    elif suffix == ".json":
        yield from _json_array(path)
    elif suffix == ".csv":
        yield from _csv(path)
    elif suffix == ".parquet":
        yield from _parquet(path)
    else:
        raise ImportFailure(f"{where}: unknown file type {suffix!r}; use one of {list(SUFFIXES)}")


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
    if not text[pos : pos + 1] == "[":
        raise ImportFailure(
            f"{path}: expected a JSON array of objects at line 1; convert the file to JSONL "
            "(one object a line) or to an array"
        )
    pos, line, counted, index = skip(pos + 1), 1, 0, 0
    if text[pos : pos + 1] == "]":
        return
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise ImportFailure(
                f"{path}, line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}); "
                f"{index} rows before it were read, the rest of the array cannot be"
            ) from None
        data, error = _object(value)
        yield Record(path, "line", line, index, data, error)
        index += 1
        pos = skip(end)
        if text[pos : pos + 1] == ",":
            pos = skip(pos + 1)
        elif text[pos : pos + 1] == "]":
            return
        else:
            line += text.count("\n", counted, pos)
            raise ImportFailure(
                f"{path}, line {line}: expected ',' or ']' after the array item that starts "
                f"at line {line}; the rest of the array cannot be read"
            )


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


def text_field(data: dict[str, Any], name: str, columns: dict[str, str], *, required: bool = True) -> str | None:
    column = columns.get(name, name)
    if column not in data or data[column] is None:
        if not required:
            return None
        raise BadRow(
            name,
            f"missing (columns present: {sorted(data)[:20]})"
            if column == name
            else f"missing column {column!r} (mapped by columns.{name}; present: {sorted(data)[:20]})",
        )
    value = data[column]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name in ("answer", "id", "difficulty"):
        value = str(value)
    if not isinstance(value, str):
        raise BadRow(name, f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise BadRow(name, "empty")
    return value


def bad_row_message(record: Record, err: BadRow) -> str:
    return record.where + (f", field {err.field!r}" if err.field else "") + f": {err.reason}"
