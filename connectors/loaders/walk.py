"""Sources to Documents: files by suffix, directories walked recursively in a deterministic order."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path

from ragkit.connectors.loaders.common import file_source, os_reason
from ragkit.connectors.loaders.html import load_html
from ragkit.connectors.loaders.pdf import load_pdf
from ragkit.connectors.loaders.rows import DEFAULT_FIELDS, RowFields, load_csv, load_jsonl
from ragkit.connectors.loaders.text import load_text
from ragkit.types import Document, LoadError

Loaded = Iterator[Document | LoadError]

_LOADERS: dict[str, Callable[[Path, RowFields], Loaded]] = {
    ".txt": lambda path, fields: load_text(path),
    ".md": lambda path, fields: load_text(path),
    ".markdown": lambda path, fields: load_text(path),
    ".html": lambda path, fields: load_html(path),
    ".htm": lambda path, fields: load_html(path),
    ".pdf": lambda path, fields: load_pdf(path),
    ".jsonl": load_jsonl,
    ".csv": load_csv,
}
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_LOADERS)


def _unsupported(suffix: str) -> str:
    supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
    kind = f"'{suffix}'" if suffix else "(no suffix)"
    return f"unsupported file type {kind} (supported: {supported})"


def load_file(path: Path, fields: RowFields = DEFAULT_FIELDS) -> Loaded:
    """The Documents of one file, chosen by its suffix; problems come out as LoadErrors, never raised."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _LOADERS:
        yield LoadError(file_source(path), _unsupported(path.suffix))
        return
    try:
        if not path.is_file():
            reason = "not a regular file" if path.exists() else "no such file or directory"
            yield LoadError(file_source(path), "is a directory, not a file" if path.is_dir() else reason)
            return
    except OSError as exc:
        yield LoadError(file_source(path), os_reason(exc))
        return
    try:
        yield from _LOADERS[suffix](path, fields)
    except Exception as exc:  # noqa: BLE001 - a file no loader anticipated must not stop the run
        yield LoadError(file_source(path), f"could not read it ({type(exc).__name__}: {exc})")


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a glob over posix relative paths: ``*`` and ``?`` stay in one folder, ``**`` spans folders.

    A pattern without ``/`` matches the name at any depth (``*.csv`` is ``**/*.csv``); one ending in ``/``
    matches that folder and everything below it.
    """
    while pattern.startswith("./"):
        pattern = pattern[2:]
    pattern = pattern.lstrip("/")
    if "/" not in pattern:
        pattern = "**/" + pattern
    below = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    out, i, n = [], 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        char = pattern[i]
        close = pattern.find("]", i + 2) if char == "[" else -1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif close != -1:
            body = pattern[i + 1 : close]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + (r"(?:/.*)?\Z" if below else r"\Z"), re.DOTALL)


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    return any(glob_regex(p).match(relative) for p in patterns)


class _Walk:
    """State of one ``load_sources`` call: the folders and files already seen, so nothing loads twice."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str], fields: RowFields) -> None:
        self.include, self.exclude, self.fields = tuple(include), tuple(exclude), fields
        self.visited_dirs: set[str] = set()
        self.loaded_files: set[str] = set()

    def file(self, path: Path) -> Loaded:
        real = os.path.realpath(path)
        if real in self.loaded_files:
            return
        self.loaded_files.add(real)
        yield from load_file(path, self.fields)

    def directory(self, root: Path, folder: Path, ancestors: tuple[str, ...]) -> Loaded:
        real = os.path.realpath(folder)
        self.visited_dirs.add(real)
        ancestors = (*ancestors, real)
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            yield LoadError(os.path.abspath(folder), os_reason(exc))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            relative = path.relative_to(root).as_posix()
            try:
                is_dir = entry.is_dir()
                is_file = entry.is_file()
                if entry.is_symlink() and not (is_dir or is_file):
                    os.stat(path)  # raises for a dangling link or a link loop
            except OSError as exc:
                yield LoadError(os.path.abspath(path), _link_reason(exc))
                continue
            if is_dir:
                if self.exclude and _matches(relative, self.exclude):
                    continue
                target = os.path.realpath(path)
                if target in ancestors:
                    yield LoadError(os.path.abspath(path), f"symbolic link loop (leads back to {target})")
                elif target not in self.visited_dirs:
                    yield from self.directory(root, path, ancestors)
            elif is_file and path.suffix.lower() in SUPPORTED_SUFFIXES:
                if self.include and not _matches(relative, self.include):
                    continue
                if self.exclude and _matches(relative, self.exclude):
                    continue
                yield from self.file(path)


def _link_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(exc, FileNotFoundError):
        return "broken symbolic link (its target does not exist)"
    return os_reason(exc)


def load_sources(
    sources: Iterable[str | Path],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    fields: RowFields = DEFAULT_FIELDS,
) -> Loaded:
    """Documents from files and folders, with one LoadError per file or row that cannot be read.

    Folders are walked recursively in sorted order, skipping dot-files and dot-folders (``.git``,
    ``.ragkit``) and files of unsupported types. ``include``/``exclude`` are globs over the path relative to
    the folder (``"**/*.md"``, ``"drafts/*"``); an excluded folder is not entered. Files named directly are
    always loaded. A file reached twice (links, repeated sources) loads once.

    Example::

        for item in load_sources(["docs/", "faq.md"], exclude=["drafts/*"]):
            print(item)
    """
    walk = _Walk(include, exclude, fields)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]  # one path, not an iterable of its characters
    for source in sources:
        path = Path(source).expanduser()
        try:
            is_dir, exists = path.is_dir(), path.exists()
            if not exists and path.is_symlink():
                os.stat(path)  # raises: the link dangles or loops
        except OSError as exc:
            yield LoadError(os.path.abspath(path), _link_reason(exc))
            continue
        if is_dir:
            yield from walk.directory(path, path, ())
        elif exists:
            yield from walk.file(path)
        else:
            yield LoadError(os.path.abspath(path), "no such file or directory")
