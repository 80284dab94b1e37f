"""Rows of data files with their provenance: JSONL, JSON (array), CSV and parquet.

Every row comes back as a `Record` that knows its file and line (parquet: row), so any stage that
rejects it can say where it was: `bad_row_message` gives "file, line N, field 'x': reason". A row that
cannot be read at all (invalid JSON, a wrong field count, bytes that are not UTF-8) carries `error`
instead of data. Text files are UTF-8; a byte-order mark is skipped. A row holding bytes that are not
UTF-8 is unreadable, with the byte's offset in the file (`encoding_errors="quarantine"`), or decoded
with U+FFFD in their place (`"replace"`). A file with no rows at all is an error naming it.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
ENCODING_ERRORS = ("quarantine", "replace")
log = logging.getLogger(__name__)


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


def read_records(path: str, setting: str = "", encoding_errors: str = "quarantine") -> Iterator[Record]:
    """The rows of one file, by suffix; unreadable rows come back with `error` set.

    `setting` names the config key the path came from, for the error of a missing, unknown or empty file.
    """
    suffix = Path(path).suffix.lower()
    where = f"{setting}: {path}" if setting else str(path)
    if encoding_errors not in ENCODING_ERRORS:
        raise ValueError(f"encoding_errors must be one of {list(ENCODING_ERRORS)}, got {encoding_errors!r}")
    if not Path(path).is_file():
        raise ImportFailure(f"{where} does not exist (working directory {Path.cwd()})")
    if suffix in (".jsonl", ".ndjson"):
        rows = _jsonl(path, encoding_errors)
    elif suffix == ".json":
        rows = _json_array(path, encoding_errors)
    elif suffix == ".csv":
        rows = _csv(path, encoding_errors)
    elif suffix == ".parquet":
        rows = _parquet(path)
    else:
        raise ImportFailure(f"{where}: unknown file type {suffix!r}; use one of {list(SUFFIXES)}")
    n = 0
    for record in rows:
        n += 1
        yield record
    if not n:
        raise ImportFailure(
            f"{where} is empty: no rows ({Path(path).stat().st_size} bytes); point the setting to a file "
            "with data, or remove it from the list"
        )


def _object(value: Any) -> tuple[dict | None, str | None]:
    if isinstance(value, dict):
        return value, None
    return None, f"expected a JSON object, got {type(value).__name__}"


class _Text:
    """A text file's content decoded as UTF-8 (BOM skipped); bytes that are not UTF-8 are kept as
    surrogates (`surrogateescape`) and listed with their byte offset and line."""

    def __init__(self, path: str, errors: str):
        data = Path(path).read_bytes()
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            # A byte-order mark says UTF-16 unambiguously (spreadsheet exports): read it as such.
            try:
                data = data.decode("utf-16").encode("utf-8", errors="surrogatepass")
            except UnicodeError as err:
                raise ImportFailure(f"{path}: starts with a UTF-16 byte-order mark but is not UTF-16 ({err})") from None
            log.warning("%s: UTF-16 (byte-order mark) read as such; byte offsets refer to its UTF-8 form", path)
        self.skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
        data = data[self.skip :]
        self.path, self.errors = path, errors
        self.text = data.decode("utf-8", errors="surrogateescape")
        self.bad: list[tuple[int, int, int]] = []  # (byte offset in the file, line, byte value)
        offset, line, previous = self.skip, 1, 0
        for match in re.finditer("[\udc80-\udcff]", self.text):  # one pass, however many bad bytes
            chunk = self.text[previous : match.start()]
            offset += len(chunk.encode("utf-8", errors="surrogateescape"))
            line += chunk.count("\n")
            self.bad.append((offset, line, ord(match.group(0)) - 0xDC00))
            offset, previous = offset + 1, match.end()
        if self.bad and errors == "replace":
            log.warning(
                "%s: %d bytes are not UTF-8 and were replaced by U+FFFD (first at byte offset %d, line %d)",
                path,
                len(self.bad),
                self.bad[0][0],
                self.bad[0][1],
            )
            self.text = data.decode("utf-8", errors="replace")

    def error(self, first_line: int, last_line: int) -> str | None:
        """The error of a row on lines first..last that holds bytes that are not UTF-8 (None: it holds none)."""
        if self.errors == "replace":
            return None
        for offset, line, byte in self.bad:
            if first_line <= line <= last_line:
                return (
                    f"not valid UTF-8: byte 0x{byte:02x} at byte offset {offset} of the file; re-encode the file "
                    "as UTF-8, or set collect.files.encoding_errors: replace to read it as U+FFFD"
                )
        return None


def _jsonl(path: str, errors: str) -> Iterator[Record]:
    content = _Text(path, errors)
    index = 0
    for number, line in enumerate(io.StringIO(content.text, newline=None), start=1):
        if not line.strip():
            continue
        error = content.error(number, number)
        data = None
        if error is None:
            try:
                data, error = _object(json.loads(line))
            except json.JSONDecodeError as err:
                data, error = None, f"not valid JSON ({err.msg}, column {err.colno})"
        yield Record(path, "line", number, index, data, error)
        index += 1


def _json_array(path: str, errors: str) -> Iterator[Record]:
    """A top-level JSON array of objects, each with the line it starts on."""
    content = _Text(path, errors)
    text = content.text
    decoder = json.JSONDecoder()

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip(0)
    if pos == len(text):
        return
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
        error = content.error(line, line + text.count("\n", pos, end)) or error
        yield Record(path, "line", line, index, None if error else data, error)
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


def _csv(path: str, errors: str) -> Iterator[Record]:
    content = _Text(path, errors)
    reader = csv.DictReader(io.StringIO(content.text, newline=""))
    header = reader.fieldnames or []
    header_error = content.error(1, 1)
    if header_error:
        raise ImportFailure(f"{path}, line 1 (the header): {header_error}")
    last = reader.line_num
    for index, row in enumerate(reader):
        error = content.error(last + 1, reader.line_num)
        if error:
            pass
        elif None in row:
            error = f"{len(header) + len(row[None])} fields, the header has {len(header)}"
        elif any(v is None for v in row.values()):
            error = f"{sum(v is not None for v in row.values())} fields, the header has {len(header)}"
        first, last = last + 1, reader.line_num
        # The line a row starts on (a quoted field may span several lines).
        yield Record(path, "line", first, index, None if error else dict(row), error)


def _parquet(path: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow's errors (ArrowInvalid, OSError) name no file and no fix
        raise ImportFailure(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from None
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
