"""JSON Lines and CSV files: one Document per row, with configurable id, title and text fields.

A BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``, ``metadata``) loads as is. A bad row is a LoadError
whose source is ``"{path}:{row}"``; the other rows still load.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragkit.connectors.loaders.common import Unreadable, file_doc_id, file_source, os_reason, text_lines
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


def load_jsonl(path: Path, fields: RowFields = DEFAULT_FIELDS) -> Iterator[Document | LoadError]:
    """Each JSON object line of a ``.jsonl`` file as a Document; ``meta["row"]`` is its line number."""
    reader = _RowReader(path, fields)
    rows = 0
    try:
        with path.open("rb") as handle:
            for number, line in text_lines(handle):
                if not line.strip():
                    continue
                rows += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield reader.error(number, f"bad JSON: {exc.msg} (column {exc.colno})")
                    continue
                if not isinstance(record, dict):
                    yield reader.error(number, f"row is a JSON {type(record).__name__}, not an object")
                    continue
                yield reader.document(number, record)
    except OSError as exc:
        yield LoadError(file_source(path), os_reason(exc))
        return
    except Unreadable as exc:
        yield LoadError(file_source(path), exc.reason)
        return
    if rows == 0:
        yield LoadError(file_source(path), "empty file")


def _csv_lines(lines: Iterable[tuple[int, str]]) -> Iterator[str]:
    for _, line in lines:
        yield line


def load_csv(path: Path, fields: RowFields = DEFAULT_FIELDS) -> Iterator[Document | LoadError]:
    """Each data row of a ``.csv`` file (header first) as a Document; ``meta["row"]`` counts data rows."""
    reader = _RowReader(path, fields)
    # Documents can be long: lift the csv module's 128 KiB field limit (a process-wide setting, only raised).
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    row = 0
    try:
        with path.open("rb") as handle:
            records = csv.DictReader(_csv_lines(text_lines(handle)))
            columns = records.fieldnames
            if not columns:
                yield LoadError(file_source(path), "empty file")
                return
            if fields.text not in columns:
                yield LoadError(
                    file_source(path),
                    f"no '{fields.text}' column (columns: {', '.join(map(str, columns))}); "
                    f"name the text column in the loader's text field",
                )
                return
            while True:
                try:
                    record = next(records)
                except StopIteration:
                    break
                except csv.Error as exc:
                    yield reader.error(row + 1, f"malformed CSV ({exc})")
                    return
                row += 1
                yield reader.document(row, record)
    except OSError as exc:
        yield LoadError(file_source(path), os_reason(exc))
        return
    except Unreadable as exc:
        yield LoadError(file_source(path), exc.reason)
        return
    if row == 0:
        yield LoadError(file_source(path), "no data rows (only a header)")
