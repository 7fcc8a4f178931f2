"""The screenshots of docs/web.md, made by the browser tests themselves rather than by hand.

    .venv/bin/python bench/web_screenshots.py [--out docs/web]

Runs ``tests/test_web.py`` (headless Chromium against ``ragkit serve`` on loopback: see that file) with
``RAGKIT_WEB_SCREENSHOTS`` set, so each picture shows the page in the state a test has just checked: ``ask.png``
(a cited answer and its sources), ``graph-path.png`` (a multi-hop hit's path), ``documents.png`` (after an
upload), ``index.png`` (counts, settings, an eval report and its plot), ``key.png`` (a server with a key file)
and ``phone.png`` (the Ask tab at a phone's width). Prints the files written; exits with the tests' status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "web", help="folder of the PNG files")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAGKIT_WEB_SCREENSHOTS": str(out), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("CI", "true")  # no browser is an error here, not a skip: there would be no pictures
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_web.py")]
    status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    for picture in sorted(out.glob("*.png")):
        shown = picture.relative_to(ROOT) if picture.is_relative_to(ROOT) else picture
        print(f"{shown}  {picture.stat().st_size} bytes")
    return status


if __name__ == "__main__":
    sys.exit(main())
