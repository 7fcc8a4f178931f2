"""JSON Lines and CSV files: one Document per row, with configurable id, title and text fields.

A BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``, ``metadata``) loads as is. A file with ordinary column
names loads too: when a row has no text field, its text is built from its columns, one ``name: value`` line
each, or from a ``RowFields.template`` such as ``"{name} lives in {city}."``. ``RowFields.per_file`` picks
other fields for some files. A bad row is a LoadError whose source is ``"{path}:{row}"``; the other rows still
load.
"""

from __future__ import annotations

import csv
import json
import os
import re
import string
from collections import deque
from collections.abc import Callable, Iterator, Mapping
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
    """Which fields of a ``.jsonl``/``.csv`` row hold the id, title and text, and how to build a text.

    When ``id`` is absent from a row, ``"id"`` is tried, then the row gets ``"{file_doc_id}:{row}"``.
    A row's text is, in this order: ``template`` filled with the row's columns, when it is set; the ``text``
    field, when the row has it (as a JSON key, or a column of the CSV header); else every other column as a
    ``name: value`` line (see ``columns_text``). ``per_file`` chooses other fields for some files: it gets the
    file's path and returns their fields, or ``None`` to keep these (``ragkit.toml``'s ``[[loaders.files]]``
    build it from globs, see ``LoaderSettings.row_fields``).

    Example::

        RowFields(id="doc_id", title="heading", text="body")
        RowFields(id="name", template="{name} lives in {city}. {notes}")
    """

    id: str = "_id"
    title: str = "title"
    text: str = "text"
    template: str | None = None
    per_file: Callable[[Path], RowFields | None] | None = None

    def __post_init__(self) -> None:
        if self.template is not None:
            TextTemplate(self.template)  # a template that cannot be used is refused here, not on every row

    def for_file(self, path: Path) -> RowFields:
        """The fields for the rows of ``path``: ``per_file``'s choice, else these."""
        chosen = self.per_file(path) if self.per_file is not None else None
        return self if chosen is None else chosen


DEFAULT_FIELDS = RowFields()


@dataclass(frozen=True)
class FieldsByPath:
    """A ``RowFields.per_file`` from rules: the fields of the first rule whose pattern matches the file.

    A pattern (a ``glob_regex``, made for paths relative to a folder) matches a file when it matches the
    file's absolute path relative to any folder above it: ``people.csv``, ``data/*.csv`` and
    ``/srv/data/people.csv`` all match ``/srv/data/people.csv``.

    Example::

        RowFields(per_file=FieldsByPath(((glob_regex("people/*.csv"), RowFields(id="name")),)))
    """

    rules: tuple[tuple[re.Pattern[str], RowFields], ...]

    def __call__(self, path: Path) -> RowFields | None:
        parts = os.path.abspath(path).replace(os.sep, "/").strip("/").split("/")
        tails = ["/".join(parts[start:]) for start in range(len(parts) - 1, -1, -1)]
        for pattern, fields in self.rules:
            if any(pattern.match(tail) for tail in tails):
                return fields
        return None


class TextTemplate:
    """A row's text from a ``str.format``-style template over its columns: ``"{name} lives in {city}."``.

    Each ``{column}`` is replaced by that column's value (``null`` or a missing CSV cell: nothing; a nested
    JSON value: compact JSON). The whole text between the braces is the column's name: nothing is evaluated,
    and there are no attribute or index look-ups, format specs or conversions. ``{{`` and ``}}`` are braces.
    A template that cannot be parsed, or that names no column, is a ValueError.

    Example::

        TextTemplate("{name} lives in {city}.").render({"name": "Ada", "city": "London"})
    """

    def __init__(self, template: str) -> None:
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"text template {template!r}: {exc} (write {{{{ and }}}} for braces)") from None
        self.parts: list[tuple[str, str | None]] = []
        for literal, column, spec, conversion in parsed:
            if column is not None and (spec or conversion is not None):
                written = "{" + column + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise ValueError(
                    f"text template {template!r}: {written} has a format spec or conversion, which are not "
                    f"supported; write {{{column}}}"
                )
            if column == "":
                raise ValueError(f"text template {template!r}: {{}} names no column; write {{column_name}}")
            self.parts.append((literal, column))
        self.columns = tuple(dict.fromkeys(column for _, column in self.parts if column is not None))
        if not self.columns:
            raise ValueError(f"text template {template!r} names no column; write {{column_name}} where a value goes")

    def render(self, record: Mapping[Any, Any]) -> str:
        """The template filled with ``record``'s values; a KeyError names a column the record lacks."""
        out: list[str] = []
        for literal, column in self.parts:
            out.append(literal)
            if column is not None:
                out.append(value_text(record[column]))
        return "".join(out)


def value_text(value: Any) -> str:
    """A column's value as text: a string stripped, ``true``/``false``, a number, nested JSON compacted to one
    line; ``None`` and empty strings, lists and objects give ``""``. A ValueError for a value nested too deeply."""
    if value is None:
        return ""
    if isinstance(value, str):
        return _clean(value.strip())
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    if isinstance(value, (list, dict)) and not value:
        return ""
    try:
        return _clean(json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str))
    except RecursionError:
        raise ValueError("a value is nested too deeply to write as text") from None


def columns_text(record: Mapping[Any, Any], skip: set[Any]) -> str:
    """A row's columns as ``name: value`` lines, in the row's order, leaving out ``skip`` and empty values."""
    lines = []
    for name, value in record.items():
        if not isinstance(name, str) or name in skip:
            continue
        text = value_text(value)
        if text:
            lines.append(f"{name}: {text}")
    return "\n".join(lines)


class _RowReader:
    """Turns parsed rows of one file into Documents, checking fields and duplicate ids."""

    def __init__(self, path: Path, fields: RowFields) -> None:
        self.path, self.fields = path, fields
        self.template = TextTemplate(fields.template) if fields.template is not None else None
        self.source = file_source(path)
        self.file_id = file_doc_id(self.source)
        self.seen: dict[str, int] = {}

    def error(self, row: int, reason: str) -> LoadError:
        return LoadError(f"{self.source}:{row}", reason)

    def document(self, row: int, record: Mapping[Any, Any]) -> Document | LoadError:
        fields = self.fields
        id_key = next((k for k in (fields.id, "id") if record.get(k) not in (None, "")), None)
        if self.template is None and fields.text in record:
            if record[fields.text] is None:
                return self.error(row, f"missing text field '{fields.text}'")
            text = record[fields.text]
            if not isinstance(text, str):
                return self.error(row, f"text field '{fields.text}' is a {type(text).__name__}, not a string")
            if not text.strip():
                return self.error(row, f"empty text in field '{fields.text}'")
        else:
            built = self.built_text(row, record, id_key)
            if isinstance(built, LoadError):
                return built
            text = built
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

    def built_text(self, row: int, record: Mapping[Any, Any], id_key: str | None) -> str | LoadError:
        """The text of a row without its text field: the template filled in, else its columns."""
        fields = self.fields
        try:
            if self.template is not None:
                missing = next((c for c in self.template.columns if c not in record), None)
                if missing is not None:
                    names = [k for k in record if isinstance(k, str)]
                    return self.error(
                        row,
                        f"text template names column '{missing}', which this row does not have "
                        f"(columns: {_columns_text(names)})",
                    )
                text = self.template.render(record)
                if not text.strip():
                    return self.error(row, "empty text: the columns the text template names are all empty")
                return text
            text = columns_text(record, {fields.id, fields.title, id_key})
        except ValueError as exc:
            return self.error(row, str(exc))
        if not text:
            return self.error(
                row, f"missing text field '{fields.text}', and no other column has a value to make a text of"
            )
        return text


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
    over the size limit) is a LoadError for that row and the next lines still load. ``fields.for_file(path)``
    gives the fields of this file.
    """
    reader = _RowReader(path, fields.for_file(path))
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

    A row's text is its text column when the header has one (the other columns become ``meta``, keyed by the
    header); without it, the columns as ``name: value`` lines, or ``fields.template`` filled in (see
    ``RowFields``). Meta is stored once per document, not per chunk, and a row is bounded by the size limit, so
    a wide file (a 10,000-column export) costs time and memory linear in its size, one row at a time. A file
    whose header lacks a column the template names is one LoadError naming it and the first 12 columns.
    ``fields.for_file(path)`` gives the fields of this file.
    """
    fields = fields.for_file(path)
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
            missing = [c for c in reader.template.columns if c not in columns] if reader.template else []
            if missing:
                yield LoadError(
                    file_source(path),
                    f"text template names column '{missing[0]}', which the file does not have "
                    f"(columns: {_columns_text(columns)})",
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
