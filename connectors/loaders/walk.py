"""Sources to Documents: files by suffix, directories walked recursively in a deterministic order."""

from __future__ import annotations

import errno
import os
import re
import stat
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

_LOADERS: dict[str, Callable[[Path, RowFields, int | None], Loaded]] = {
    ".txt": lambda path, fields, limit: load_text(path, limit),
    ".md": lambda path, fields, limit: load_text(path, limit),
    ".markdown": lambda path, fields, limit: load_text(path, limit),
    ".html": lambda path, fields, limit: load_html(path, limit),
    ".htm": lambda path, fields, limit: load_html(path, limit),
    ".pdf": lambda path, fields, limit: load_pdf(path, limit),
    ".jsonl": load_jsonl,
    ".csv": load_csv,
}
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_LOADERS)


def _unsupported(suffix: str) -> str:
    supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
    kind = f"'{suffix}'" if suffix else "(no suffix)"
    return f"unsupported file type {kind} (supported: {supported})"


def load_file(path: Path, fields: RowFields = DEFAULT_FIELDS, *, max_file_bytes: int | None = None) -> Loaded:
    """The Documents of one file, chosen by its suffix; problems come out as LoadErrors, never raised.

    ``max_file_bytes``: the size limit of a one-document file and of one row (see ``common.size_limit``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _LOADERS:
        yield LoadError(file_source(path), _unsupported(path.suffix))
        return
    try:
        if not path.is_file():
            yield LoadError(file_source(path), _not_a_file(path))
            return
    except OSError as exc:
        yield LoadError(file_source(path), os_reason(exc))
        return
    try:
        yield from _LOADERS[suffix](path, fields, max_file_bytes)
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


def _not_a_file(path: Path) -> str:
    """Why ``path`` (which is not a regular file) is not loaded; reading a pipe or a device could block."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file or directory"
    except OSError as exc:
        return _link_reason(exc)
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    kind = "named pipe" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
    return f"not a regular file ({kind})"


DirKey = tuple[int, int]


class _Walk:
    """State of one ``load_sources`` call: the folders and files already seen, so nothing loads twice.

    Folders and files are known by ``(device, inode)``, so links and repeated sources are recognized without
    resolving paths (which costs one system call per path component: quadratic in a deep tree).
    """

    def __init__(
        self, include: Sequence[str], exclude: Sequence[str], fields: RowFields, max_file_bytes: int | None
    ) -> None:
        self.include, self.exclude, self.fields = tuple(include), tuple(exclude), fields
        self.max_file_bytes = max_file_bytes
        self.visited_dirs: set[DirKey] = set()
        self.loaded_files: set[DirKey | str] = set()

    def file(self, path: Path, key: DirKey | None = None) -> Loaded:
        if key is None:
            try:
                info = os.stat(path)
                key = (info.st_dev, info.st_ino)
            except OSError:
                key = None  # load_file reports it
        seen = key if key is not None else os.path.abspath(path)
        if seen in self.loaded_files:
            return
        self.loaded_files.add(seen)
        yield from load_file(path, self.fields, max_file_bytes=self.max_file_bytes)

    def _scan(self, folder: str) -> list[os.DirEntry[str]] | LoadError:
        try:
            with os.scandir(folder) as scan:
                return sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            return LoadError(os.path.abspath(folder), os_reason(exc))

    def directory(self, root: Path) -> Loaded:
        """Walk ``root`` depth first in sorted order, without recursion (a tree may be thousands deep)."""
        try:
            info = os.stat(root)
        except OSError as exc:
            yield LoadError(os.path.abspath(root), os_reason(exc))
            return
        prefix = len(os.path.join(str(root), ""))
        top = (info.st_dev, info.st_ino)
        self.visited_dirs.add(top)
        entries = self._scan(str(root))
        if isinstance(entries, LoadError):
            yield entries
            return
        # One level per open folder: (its key, its sorted entries, the next position); their keys: ancestors.
        stack: list[tuple[DirKey, list[os.DirEntry[str]], int]] = [(top, entries, 0)]
        ancestors: set[DirKey] = {top}
        while stack:
            key, entries, position = stack[-1]
            if position >= len(entries):
                stack.pop()
                ancestors.discard(key)
                continue
            stack[-1] = (key, entries, position + 1)
            entry = entries[position]
            if entry.name.startswith("."):
                continue
            relative = entry.path[prefix:].replace(os.sep, "/")
            try:
                is_dir = entry.is_dir()
                is_file = entry.is_file()
                if entry.is_symlink() and not (is_dir or is_file):
                    os.stat(entry.path)  # raises for a dangling link or a link loop
                target = entry.stat() if is_dir or is_file else None
            except OSError as exc:
                yield LoadError(os.path.abspath(entry.path), _link_reason(exc))
                continue
            if is_dir:
                if self.exclude and _matches(relative, self.exclude):
                    continue
                assert target is not None
                child = (target.st_dev, target.st_ino)
                if child in ancestors:
                    yield LoadError(
                        os.path.abspath(entry.path),
                        f"symbolic link loop (leads back to {os.path.realpath(entry.path)})",
                    )
                elif child not in self.visited_dirs:
                    self.visited_dirs.add(child)
                    below = self._scan(entry.path)
                    if isinstance(below, LoadError):
                        yield below
                        continue
                    stack.append((child, below, 0))
                    ancestors.add(child)
                continue
            if Path(entry.name).suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            if self.include and not _matches(relative, self.include):
                continue
            if self.exclude and _matches(relative, self.exclude):
                continue
            path = Path(entry.path)
            if is_file:
                assert target is not None
                yield from self.file(path, (target.st_dev, target.st_ino))
            else:  # a named pipe, socket or device: reading it could block the run (or never end)
                yield LoadError(os.path.abspath(path), _not_a_file(path))  # the link, when it is one


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
    max_file_bytes: int | None = None,
) -> Loaded:
    """Documents from files and folders, with one LoadError per file or row that cannot be read.

    Folders are walked recursively in sorted order, skipping dot-files and dot-folders (``.git``,
    ``.ragkit``) and files of unsupported types. ``include``/``exclude`` are globs over the path relative to
    the folder (``"**/*.md"``, ``"drafts/*"``); an excluded folder is not entered. Files named directly are
    always loaded. A file reached twice (links, repeated sources) loads once. Pipes, sockets and devices
    with a supported suffix are reported, not read. ``max_file_bytes`` limits the size of a one-document file
    and of one row (default: ``$RAGKIT_MAX_FILE_MB`` MiB, else 64 MiB); bigger ones are LoadErrors.

    Example::

        for item in load_sources(["docs/", "faq.md"], exclude=["drafts/*"]):
            print(item)
    """
    walk = _Walk(include, exclude, fields, max_file_bytes)
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
            yield from walk.directory(path)
        elif exists:
            yield from walk.file(path)
        else:
            yield LoadError(os.path.abspath(path), "no such file or directory")
