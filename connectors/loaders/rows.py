"""JSON Lines and CSV files: one Document per row, with configurable id, title and text fields.

A BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``, ``metadata``) loads as is. A bad row is a LoadError
whose source is ``"{path}:{row}"``; the other rows still load.
"""

from __future__ import annotations

import csv
import json
import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragkit.connectors.loaders.common import (
    Line,
    Unreadable,
    file_doc_id,
    file_source,
    os_reason,
    text_lines,
)
from ragkit.types import Document, LoadError

_SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class RowFields:
    """Which fields of a ``.jsonl``/``.csv`` row hold the id, title and text.

    When ``id`` is absent from a row, ``"id"`` is tried, then the row gets ``"{file_doc_id}:{row}"``.

    Example::

        RowFields(id="doc_id", title="heading", text="body")
    """

    id: str = "_id"
    title: str = "title"
    text: str = "text"


DEFAULT_FIELDS = RowFields()


class _RowReader:
    """Turns parsed rows of one file into Documents, checking fields and duplicate ids."""

    def __init__(self, path: Path, fields: RowFields) -> None:
        self.path, self.fields = path, fields
        self.source = file_source(path)
        self.file_id = file_doc_id(self.source)
        self.seen: dict[str, int] = {}

    def error(self, row: int, reason: str) -> LoadError:
        return LoadError(f"{self.source}:{row}", reason)

    def document(self, row: int, record: Mapping[Any, Any]) -> Document | LoadError:
        fields = self.fields
        if fields.text not in record or record[fields.text] is None:
            return self.error(row, f"missing text field '{fields.text}'")
        text = record[fields.text]
        if not isinstance(text, str):
            return self.error(row, f"text field '{fields.text}' is a {type(text).__name__}, not a string")
        if not text.strip():
            return self.error(row, f"empty text in field '{fields.text}'")
        id_key = next((k for k in (fields.id, "id") if record.get(k) not in (None, "")), None)
        if id_key is not None and not isinstance(record[id_key], _SCALARS):
            return self.error(row, f"id field '{id_key}' is a {type(record[id_key]).__name__}, not a value")
        doc_id = str(record[id_key]) if id_key is not None else f"{self.file_id}:{row}"
        if doc_id in self.seen:
            return self.error(row, f"duplicate id '{doc_id}' (first used on row {self.seen[doc_id]})")
        self.seen[doc_id] = row
        title = record.get(fields.title)
        used = {fields.text, fields.title, id_key}
        meta = {k: v for k, v in record.items() if k not in used and isinstance(k, str) and _scalar(v)}
        meta["row"] = row
        return Document(
            id=doc_id,
            text=text,
            source=self.source,
            title=str(title).strip() if _scalar(title) else "",
            meta=meta,
        )


def _scalar(value: Any) -> bool:
    return isinstance(value, _SCALARS)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(value: Any) -> Any:
    """A string with lone surrogates (JSON ``"\\ud83d"`` escapes of half an emoji) replaced by U+FFFD.

    Such strings are not valid Unicode: they cannot be encoded as UTF-8, so the catalog could not store them.
    """
    if isinstance(value, str) and _SURROGATE.search(value):
        return _SURROGATE.sub("\ufffd", value)
    return value


def _clean_record(record: Mapping[Any, Any]) -> dict[Any, Any]:
    return {_clean(k): _clean(v) for k, v in record.items()}


def load_jsonl(
    path: Path, fields: RowFields = DEFAULT_FIELDS, max_file_bytes: int | None = None
) -> Iterator[Document | LoadError]:
    """Each JSON object line of a ``.jsonl`` file as a Document; ``meta["row"]`` is its line number.

    The file is streamed line by line; a line that is not a JSON object (bad JSON, invalid UTF-8, NUL bytes,
    over the size limit) is a LoadError for that row and the next lines still load.
    """
    reader = _RowReader(path, fields)
    rows = 0
    try:
        with path.open("rb") as handle:
            for number, line, problem in text_lines(handle, max_file_bytes):
                if problem is not None:
                    rows += 1
                    yield reader.error(number, problem)
                    continue
                if not line.strip():
                    continue
                rows += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield reader.error(number, f"bad JSON: {exc.msg} (column {exc.colno})")
                    continue
                except RecursionError:
                    yield reader.error(number, "bad JSON: nested too deeply")
                    continue
                except ValueError as exc:  # e.g. an integer with more digits than Python converts
                    yield reader.error(number, f"bad JSON: {exc}")
                    continue
                if not isinstance(record, dict):
                    yield reader.error(number, f"row is a JSON {type(record).__name__}, not an object")
                    continue
                yield reader.document(number, _clean_record(record))
    except OSError as exc:
        yield LoadError(file_source(path), os_reason(exc))
        return
    except Unreadable as exc:
        yield LoadError(file_source(path), exc.reason)
        return
    if rows == 0:
        yield LoadError(file_source(path), "empty file")


class _CsvLines:
    """The lines fed to ``csv.reader``, remembering those of the record being parsed.

    Lines put back in ``pending`` are read again first: after an unterminated quoted field swallowed the rest
    of the file, parsing restarts on the line after the one where that field began.
    """

    def __init__(self, lines: Iterator[Line]) -> None:
        self.lines = lines
        self.pending: deque[Line] = deque()
        self.record: list[Line] = []
        self.exhausted = False

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        if self.pending:
            item = self.pending.popleft()
        else:
            try:
                item = next(self.lines)
            except StopIteration:
                self.exhausted = True
                raise
        self.record.append(item)
        return item[1]

    def start(self) -> None:
        self.record = []

    def unterminated(self) -> bool:
        """Whether the record just parsed ran to the end of the file inside a quoted field."""
        if not self.exhausted or not self.record:
            return False
        try:
            for _ in csv.reader((line for _, line, _ in self.record), strict=True):
                pass
        except csv.Error as exc:
            return "unexpected end of data" in str(exc)
        return False

    def restart_after_first_line(self) -> None:
        self.pending.extendleft(reversed(self.record[1:]))
        self.exhausted = False


def _columns_text(columns: list[str]) -> str:
    shown = [c if len(c) <= 40 else c[:37] + "..." for c in columns[:12]]
    return ", ".join(shown) + (f", ... ({len(columns)} columns)" if len(columns) > 12 else "")


def load_csv(
    path: Path, fields: RowFields = DEFAULT_FIELDS, max_file_bytes: int | None = None
) -> Iterator[Document | LoadError]:
    """Each data row of a ``.csv`` file (header first) as a Document; ``meta["row"]`` counts data rows.

    The file is streamed. A malformed row (invalid UTF-8, NUL bytes, a line over the size limit, a quoted
    field left open to the end of the file) is a LoadError for that row, and the rows after it still load:
    after an unterminated quote, parsing starts again on the next line.

    A row's text is its text column, and only that: the other columns (every one of them, however many: a
    10,000-column export too) become ``meta``, keyed by the header, and are never joined into the text (a
    sheet of numbers would index as noise, and the text of one row would grow with the column count). Meta
    is stored once per document, not per chunk, and a row is bounded by the size limit, so a wide file
    costs time and memory linear in its size, one row at a time. A file without the text column is one
    LoadError naming it and the first 12 columns.
    """
    reader = _RowReader(path, fields)
    # Documents can be long: lift the csv module's 128 KiB field limit (a process-wide setting, only raised).
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    row = 0
    try:
        with path.open("rb") as handle:
            lines = _CsvLines(text_lines(handle, max_file_bytes))
            try:
                columns = next(csv.reader(lines))
            except StopIteration:
                columns = []
            except csv.Error as exc:
                yield LoadError(file_source(path), f"malformed CSV header ({exc})")
                return
            problems = [problem for _, _, problem in lines.record if problem]
            if problems or lines.unterminated():
                reason = problems[0] if problems else "a quoted field is never closed"
                yield LoadError(file_source(path), f"unreadable header row: {reason}")
                return
            if not any(c.strip() for c in columns):
                yield LoadError(file_source(path), "empty file")
                return
            if fields.text not in columns:
                yield LoadError(
                    file_source(path),
                    f"no '{fields.text}' column (columns: {_columns_text(columns)}); "
                    f"name the text column in the loader's text field",
                )
                return
            records = csv.reader(lines)
            while True:
                lines.start()
                try:
                    values = next(records)
                except StopIteration:
                    break
                except csv.Error as exc:
                    row += 1
                    yield reader.error(row, f"malformed CSV ({exc})")
                    records = csv.reader(lines)
                    continue
                if not values:
                    continue  # a blank line
                row += 1
                if lines.unterminated():
                    first = lines.record[0][0]
                    yield reader.error(
                        row, f"malformed CSV (a quoted field opened on line {first} is never closed)"
                    )
                    lines.restart_after_first_line()
                    records = csv.reader(lines)
                    continue
                problems = [problem for _, _, problem in lines.record if problem]
                if problems:
                    yield reader.error(row, problems[0])
                    continue
                record: dict[Any, Any] = dict(zip(columns, values, strict=False))
                if len(values) > len(columns):
                    record[None] = values[len(columns) :]
                for column in columns[len(values) :]:
                    record.setdefault(column, None)
                yield reader.document(row, record)
    except OSError as exc:
        yield LoadError(file_source(path), os_reason(exc))
        return
    except Unreadable as exc:
        yield LoadError(file_source(path), exc.reason)
        return
    if row == 0:
        yield LoadError(file_source(path), "no data rows (only a header)")
