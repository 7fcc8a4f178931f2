"""Running ``ragkit`` in a subprocess as a user does; every run is checked for a leaked traceback.

A CLI failure must be one clear line and a non-zero exit code, never a Python traceback (``--debug`` shows
one on purpose), so every suite that runs the CLI goes through :func:`run_ragkit`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def run_ragkit(
    *args: str | os.PathLike[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    allow_traceback: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``python -m ragkit.cli ARGS`` in ``cwd``; fails the test if stdout or stderr holds a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "ragkit.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if not allow_traceback:
        for name, stream in (("stdout", result.stdout), ("stderr", result.stderr)):
            command = " ".join(map(str, args))
            assert "Traceback" not in stream, f"ragkit {command} printed a traceback on {name}:\n{stream}"
    return result
