"""Opening the SQLite files of an index: read-write for writers, strictly read-only for readers.

A reader's connection is opened with ``mode=ro``, so nothing it does can change the file. SQLite still needs the
WAL's shared-memory file (``-shm``); in a directory the reader may not write, and with no WAL left behind (the
last writer closed cleanly), the file is opened ``immutable`` instead, which needs no such file.
"""

from __future__ import annotations

import sqlite3
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
        if "readonly" not in str(exc) and "unable to open" not in str(exc):
            raise
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise IndexFormatError(
                f"{path}: writes are still in {wal.name} and this directory is read-only; open the index "
                "once with write access (`ragkit repair`) to fold them in"
            ) from None
    return sqlite3.connect(
        f"{uri}?immutable=1", uri=True, check_same_thread=False, isolation_level=None, timeout=timeout
    )
