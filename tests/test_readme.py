"""README.md's examples run as written: its ``ragkit`` commands, in order, and its Python snippet.

They run in a temporary folder holding a copy of ``docs/`` (the README indexes it), with the real packaged
MiniLM model and spaCy, offline. ``../shared/data`` is the evaluation data next to the checkout: commands that
read it run in a test of their own, which skips when it is absent. ``make`` and ``pip`` lines are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import run_ragkit

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED_DATA = "../shared/data"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SHELL = {"bash", "sh", "console", "shell"}
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
PLACEHOLDER = re.compile(r"\.\.\.|<[^>]+>|[A-Z][A-Z_]+")  # a whole argument: "...", <file>, DOC_ID


def blocks(*languages: str) -> list[str]:
    """The bodies of README.md's fenced blocks in these languages, in order."""
    return [body for language, body in FENCE.findall(README.read_text(encoding="utf-8")) if language in languages]


def readme_commands() -> list[list[str]]:
    """The arguments of each ``ragkit`` command of the shell blocks (``$`` prompts and ``#`` comments dropped)."""
    commands = []
    for body in blocks(*SHELL):
        for line in body.splitlines():
            words = shlex.split(line.strip().removeprefix("$ "), comments=True)
            if words and words[0] == "ragkit":
                commands.append(words[1:])
    return commands


def needs_data(command: list[str]) -> bool:
    return any(word.startswith(SHARED_DATA) for word in command)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``ragkit COMMAND`` as README.md writes it; fails on a traceback, a non-zero exit, or an uncited answer."""
    result = run_ragkit(*command, cwd=cwd, env=OFFLINE)
    shown = f"ragkit {shlex.join(command)}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, shown
    if command[0] == "ask":
        assert "[1]" in result.stdout, shown
    return result


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A checkout-like folder: ``docs/`` copied, ``../shared/data`` linked to the real one when it exists."""
    root = tmp_path / "main"
    shutil.copytree(REPO / "docs", root / "docs")
    data = REPO.parent / "shared" / "data"
    if data.is_dir():
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "data").symlink_to(data, target_is_directory=True)
    return root


def test_readme_has_examples_without_placeholders():
    commands = readme_commands()
    assert commands and commands[0][0] == "index", "README.md's first ragkit command should index docs/"
    assert blocks("python"), "README.md should show the Python API"
    for command in commands:
        placeholders = [word for word in command if not word.startswith("--") and PLACEHOLDER.fullmatch(word)]
        assert not placeholders, f"ragkit {shlex.join(command)}: replace {placeholders} with real values"


@pytest.mark.slow
def test_readme_commands_run_as_written(workspace):
    commands = [command for command in readme_commands() if not needs_data(command)]
    for command in commands:
        run(command, workspace)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    "command", [c for c in readme_commands() if needs_data(c)] or [pytest.param([], marks=pytest.mark.skip)],
    ids=shlex.join,
)
def test_readme_commands_on_the_evaluation_data(command, workspace):
    """As for a user, the index of a dataset comes from ``ragkit eval``'s cache (``$RAGKIT_CACHE``, else
    ``~/.cache/ragkit/eval``): a cold cache builds it (HotpotQA's 994 passages with their graph: a few minutes on
    two CPU cores), a warm one answers in about a minute."""
    if not (workspace.parent / "shared" / "data").is_dir():
        pytest.skip(f"evaluation data not found at {REPO.parent / 'shared' / 'data'}")
    run(command, workspace)


@pytest.mark.slow
@pytest.mark.parametrize("snippet", blocks("python"))
def test_readme_python_runs_as_written(snippet, workspace):
    result = subprocess.run(
        [sys.executable, "-c", snippet], cwd=workspace, capture_output=True, text=True, timeout=900,
        env={**os.environ, **OFFLINE},
    )
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0 and "Traceback" not in result.stderr, shown
    assert str(workspace / "docs") in result.stdout and "[1]" in result.stdout, shown
