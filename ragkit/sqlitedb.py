"""Opening the SQLite files of an index: read-write for writers, strictly read-only for readers.

A reader's connection is opened with ``mode=ro``, so nothing it does can change the file. SQLite still needs the
WAL's shared-memory file (``-shm``); in a directory the reader may not write, and with no WAL left behind (the
last writer closed cleanly), the file is opened ``immutable`` instead, which needs no such file. When a killed
writer left committed transactions in the WAL and reading them needs a recovery the directory does not allow,
the reader reads a private temporary copy of the database and its WAL: the files stay as they were.
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import tempfile
from pathlib import Path

from ragkit.errors import IndexFormatError


def connect(path: Path, *, read_only: bool, timeout: float = 30.0) -> sqlite3.Connection:
    """A connection for any thread (callers serialise their own use), in autocommit mode."""
    if not read_only:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn
    uri = Path(path).resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False, isolation_level=None, timeout=timeout)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if not any(reason in str(exc) for reason in _READ_ONLY_FAILURES):
            raise
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        # committed writes are still in the WAL (a writer was killed), and reading them needs to recover its
        # index, which this directory does not allow: read a private copy of the database and its WAL instead
        return _private_copy(Path(path), wal, timeout)
    return sqlite3.connect(
        f"{uri}?immutable=1", uri=True, check_same_thread=False, isolation_level=None, timeout=timeout
    )


_READ_ONLY_FAILURES = ("readonly", "unable to open", "locking protocol")


def _private_copy(path: Path, wal: Path, timeout: float) -> sqlite3.Connection:
    folder = Path(tempfile.mkdtemp(prefix="ragkit-readonly-"))
    atexit.register(shutil.rmtree, folder, True)
    try:
        shutil.copyfile(path, folder / path.name)
        shutil.copyfile(wal, folder / wal.name)
    except OSError as exc:
        raise IndexFormatError(
            f"{path}: writes are still in {wal.name}, this directory is read-only and no private copy could be "
            f"made ({exc}); open the index once with write access (`ragkit repair`)"
        ) from None
    return sqlite3.connect(folder / path.name, check_same_thread=False, isolation_level=None, timeout=timeout)
