"""Sources to Documents: files by suffix, directories walked recursively in a deterministic order.

A symbolic link met while walking a folder is followed only when its target stays inside the folders (or is
one of the files) being indexed, unless ``follow_symlinks``: a shared folder must not pull ``/etc/passwd`` or
someone's keys into an index through a link.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path

from ragkit.connectors.loaders.common import file_source, os_reason, path_source
from ragkit.connectors.loaders.html import load_html
from ragkit.connectors.loaders.pdf import load_pdf
from ragkit.connectors.loaders.rows import DEFAULT_FIELDS, RowFields
from ragkit.connectors.loaders.text import load_text
from ragkit.registry import loaders
from ragkit.types import Document, LoadError

Loaded = Iterator[Document | LoadError]
Found = Iterator[Path | LoadError]  # the files to load, and what cannot be walked
Loader = Callable[[Path, RowFields, int | None], Loaded]


# The built-in loaders, registered by suffix in ragkit.registry.loaders (.jsonl and .csv: rows.load_jsonl/load_csv).
def text_file(path: Path, fields: RowFields, max_file_bytes: int | None) -> Loaded:
    """``.txt``, ``.md`` and ``.markdown`` files."""
    return load_text(path, max_file_bytes)


def html_file(path: Path, fields: RowFields, max_file_bytes: int | None) -> Loaded:
    """``.html`` and ``.htm`` files."""
    return load_html(path, max_file_bytes)


def pdf_file(path: Path, fields: RowFields, max_file_bytes: int | None) -> Loaded:
    """``.pdf`` files."""
    return load_pdf(path, max_file_bytes)


def supported_suffixes() -> frozenset[str]:
    """The lower-case suffixes (``.txt``) that a registered loader reads: ragkit's and plugins'."""
    return frozenset(loaders.names())


def __getattr__(name: str) -> frozenset[str]:
    if name == "SUPPORTED_SUFFIXES":  # read from the registry each time: a plugin may add suffixes
        return supported_suffixes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _unsupported(suffix: str) -> str:
    supported = ", ".join(sorted(supported_suffixes()))
    kind = f"'{suffix}'" if suffix else "(no suffix)"
    return f"unsupported file type {kind} (supported: {supported})"


def load_file(path: Path, fields: RowFields = DEFAULT_FIELDS, *, max_file_bytes: int | None = None) -> Loaded:
    """The Documents of one file, chosen by its suffix; problems come out as LoadErrors, never raised.

    ``max_file_bytes``: the size limit of a one-document file and of one row (see ``common.size_limit``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in loaders:
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
        loader: Loader = loaders.get(suffix)
        yield from loader(path, fields, max_file_bytes)
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

OUTSIDE_LINK = "symbolic link to {target} outside the indexed folder; not followed (use --follow-symlinks)"


def _source(path: str | os.PathLike[str]) -> str:
    """The source of a LoadError for a path that is not resolved (a link, a folder): absolute, storable."""
    return path_source(os.path.abspath(path))


class _Walk:
    """State of one walk over sources: the folders and files already seen, so nothing is found twice.

    Folders and files are known by ``(device, inode)``, so links and repeated sources are recognized without
    resolving paths (which costs one system call per path component: quadratic in a deep tree). Only
    symbolic links are resolved, to tell whether they lead out of ``roots`` (the resolved folders being
    indexed) and ``named_files`` (the resolved files named as sources).
    """

    def __init__(
        self,
        include: Sequence[str],
        exclude: Sequence[str],
        *,
        follow_symlinks: bool = False,
        roots: Sequence[str] = (),
        named_files: Iterable[str] = (),
    ) -> None:
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.follow_symlinks = follow_symlinks
        self.roots = tuple(os.path.join(root, "") for root in roots)  # with a trailing separator
        self.named_files = frozenset(named_files)
        self.visited_dirs: set[DirKey] = set()
        self.found_files: set[DirKey | str] = set()

    def outside_link(self, entry: os.DirEntry[str]) -> LoadError | None:
        """The LoadError for a link whose target lies outside the roots, unless links are followed."""
        if self.follow_symlinks or not entry.is_symlink():
            return None
        target = os.path.realpath(entry.path)
        inside = os.path.join(target, "")
        if target in self.named_files or any(inside.startswith(root) for root in self.roots):
            return None
        return LoadError(_source(entry.path), OUTSIDE_LINK.format(target=path_source(target)))

    def file(self, path: Path, key: DirKey | None = None) -> Found:
        """``path``, unless it was found before (through a link, or a repeated source)."""
        if key is None:
            try:
                info = os.stat(path)
                key = (info.st_dev, info.st_ino)
            except OSError:
                key = None  # load_file reports it
        seen = key if key is not None else os.path.abspath(path)
        if seen in self.found_files:
            return
        self.found_files.add(seen)
        yield path

    def _scan(self, folder: str) -> list[os.DirEntry[str]] | LoadError:
        try:
            with os.scandir(folder) as scan:
                return sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            return LoadError(_source(folder), os_reason(exc))

    def directory(self, root: Path) -> Found:
        """Walk ``root`` depth first in sorted order, without recursion (a tree may be thousands deep)."""
        try:
            info = os.stat(root)
        except OSError as exc:
            yield LoadError(_source(root), os_reason(exc))
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
                yield LoadError(_source(entry.path), _link_reason(exc))
                continue
            if is_dir:
                if self.exclude and _matches(relative, self.exclude):
                    continue
                outside = self.outside_link(entry)
                if outside is not None:
                    yield outside
                    continue
                assert target is not None
                child = (target.st_dev, target.st_ino)
                if child in ancestors:
                    yield LoadError(
                        _source(entry.path),
                        f"symbolic link loop (leads back to {path_source(os.path.realpath(entry.path))})",
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
            if Path(entry.name).suffix.lower() not in loaders:
                continue
            if self.include and not _matches(relative, self.include):
                continue
            if self.exclude and _matches(relative, self.exclude):
                continue
            outside = self.outside_link(entry)
            if outside is not None:
                yield outside
                continue
            path = Path(entry.path)
            if is_file:
                assert target is not None
                yield from self.file(path, (target.st_dev, target.st_ino))
            else:  # a named pipe, socket or device: reading it could block the run (or never end)
                yield LoadError(_source(path), _not_a_file(path))  # the link, when it is one


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
    follow_symlinks: bool = False,
) -> Loaded:
    """Documents from files and folders, with one LoadError per file or row that cannot be read.

    Folders are walked recursively in sorted order, skipping dot-files and dot-folders (``.git``,
    ``.ragkit``) and files of unsupported types. ``include``/``exclude`` are globs over the path relative to
    the folder (``"**/*.md"``, ``"drafts/*"``); an excluded folder is not entered. Files named directly are
    always loaded. A file reached twice (links, repeated sources) loads once. Pipes, sockets and devices
    with a supported suffix are reported, not read. ``max_file_bytes`` limits the size of a one-document file
    and of one row (default: ``$RAGKIT_MAX_FILE_MB`` MiB, else 64 MiB); bigger ones are LoadErrors.

    A symbolic link (to a file or a folder, at any depth) whose target resolves outside every folder given
    as a source, and is not one of the files given, is not followed unless ``follow_symlinks``: it is one
    LoadError "symbolic link to TARGET outside the indexed folder; not followed". Links that stay inside are
    followed. A link named directly as a source is always followed. Sources of documents and errors are made
    storable by ``common.path_source`` (a name that is not UTF-8 has its bad bytes written ``\\xNN``).

    Example::

        for item in load_sources(["docs/", "faq.md"], exclude=["drafts/*"]):
            print(item)
    """
    for found in _find(sources, include, exclude, follow_symlinks):
        if isinstance(found, LoadError):
            yield found
        else:
            yield from load_file(found, fields, max_file_bytes=max_file_bytes)


def iter_files(
    sources: Iterable[str | Path],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    follow_symlinks: bool = False,
) -> Iterator[Path]:
    """The files that :func:`load_sources` reads for the same arguments, in its order and each once, without
    opening them: a progress bar's total is counted by walking the folders first, which costs a fraction of
    loading them. A CSV or JSONL file is one file, however many rows it holds.

    Left out, as ``load_sources`` leaves them out or reports them as errors: dot-files, files of unsupported
    types and files that ``include``/``exclude`` rule out, links leading outside the folders (unless
    ``follow_symlinks``), broken links, pipes and missing sources; a file named directly counts when a loader
    reads its suffix and it is a regular file.
    """
    for found in _find(sources, include, exclude, follow_symlinks):
        if isinstance(found, LoadError):
            continue
        try:
            if found.suffix.lower() in loaders and found.is_file():
                yield found
        except OSError:  # load_sources reports it
            continue


def count_files(
    sources: Iterable[str | Path],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    follow_symlinks: bool = False,
) -> int:
    """How many files :func:`load_sources` reads for the same arguments (see :func:`iter_files`)."""
    return sum(1 for _ in iter_files(sources, include=include, exclude=exclude, follow_symlinks=follow_symlinks))


def _find(
    sources: Iterable[str | Path], include: Sequence[str], exclude: Sequence[str], follow_symlinks: bool
) -> Found:
    """The walk shared by ``load_sources`` and ``iter_files``: the files to load, and the sources, folders
    and links that cannot be walked (as LoadErrors)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]  # one path, not an iterable of its characters
    paths = [Path(source).expanduser() for source in sources]
    roots: list[str] = []
    named_files: list[str] = []
    for path in paths:
        try:
            resolved = os.path.realpath(path)
            (roots if os.path.isdir(resolved) else named_files).append(resolved)
        except (OSError, ValueError):  # reported below, when the source is loaded
            continue
    walk = _Walk(include, exclude, follow_symlinks=follow_symlinks, roots=roots, named_files=named_files)
    for path in paths:
        try:
            is_dir, exists = path.is_dir(), path.exists()
            if not exists and path.is_symlink():
                os.stat(path)  # raises: the link dangles or loops
        except OSError as exc:
            yield LoadError(_source(path), _link_reason(exc))
            continue
        if is_dir:
            yield from walk.directory(path)
        elif exists:
            yield from walk.file(path)
        else:
            yield LoadError(_source(path), "no such file or directory")
