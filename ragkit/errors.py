"""ragkit's exceptions. Every message names the file or setting at fault and what would fix it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RagkitError(Exception):
    """Base class of every error ragkit raises on purpose."""


class ConfigError(RagkitError, ValueError):
    """A bad setting in ragkit.toml, a keyword argument or a CLI flag."""


class IndexFormatError(RagkitError):
    """An index directory that is missing, tampered with, truncated or from an incompatible version."""


class EmbedderMismatchError(IndexFormatError):
    """The index was built with a different embedder than the one asked for."""


class DimensionMismatchError(RagkitError, ValueError):
    """Vectors whose dimension differs from the index's."""


class IndexClosedError(RagkitError):
    """An index used after ``close()`` (or after its ``with`` block ended)."""


class GeneratorError(RagkitError):
    """A generation backend failed (server down, timeout, malformed response)."""


class PluginError(RagkitError, ImportError):
    """A third-party plugin (an entry point of ``ragkit.registry``) whose code fails to import; names its package."""


def missing_extra(package: str, extra: str) -> ImportError:
    """The ImportError raised when an optional dependency is absent, naming the install that fixes it."""
    return ImportError(
        f"{package} is not installed; it comes with ragkit's {extra!r} extra: pip install 'ragkit[{extra}]'"
    )


@contextmanager
def sqlite_damage(path: Path, what: str) -> Iterator[None]:
    """SQLite errors of a damaged or tampered database file become an IndexFormatError naming ``path``:
    ``"{path}: {what} ({error})"``. A busy database, a constraint violation or a misused API stay what they are."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError) or (
            isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))
        ):
            raise
        raise IndexFormatError(f"{path}: {what} ({exc})") from None
