"""``ragkit mcp`` driven by the official ``mcp`` SDK's own stdio client, as an MCP host (Claude Desktop, an IDE
agent) runs it: a subprocess speaking JSON-RPC over its stdin and stdout.

The index uses the hashing embedder (``hashing-64`` in its manifest, which the subprocess reopens through the
embedder registry): the protocol, not the model, is under test, and each server starts in a few seconds.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cli_run import run_ragkit
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult

from ragkit.config import load_settings
from ragkit.index import Index
from ragkit.serve.schemas import hit_json
from ragkit.testing import HashingEmbedder
from ragkit.types import Document

pytestmark = pytest.mark.timeout(180)

BIO = {
    "axolotl": "Axolotls regrow lost limbs, including bones, muscles and nerves, within a few weeks.",
    "tardigrade": "Tardigrades survive extreme dehydration by entering a dormant state called cryptobiosis.",
}
OTHER = {
    "kepler": "Kepler's third law relates a planet's orbital period to the size of its orbit around the sun.",
    "sourdough": "A sourdough starter ferments flour and water with wild yeast and lactic acid bacteria.",
}
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny index (two documents tagged ``team: bio``, two untagged) and a ragkit.toml choosing the extractive
    generator, so that ``ask`` is the same on a machine with a GPU (where ``auto`` would load a local model)."""
    root = tmp_path_factory.mktemp("mcp")
    with Index.create(root / "idx", embedder=HashingEmbedder(64), graph=False) as index:
        for docs, tags in ((BIO, {"team": "bio"}), (OTHER, {})):
            index.add_documents(
                [Document(id=doc_id, text=text, source=f"notes/{doc_id}.md") for doc_id, text in docs.items()],
                meta=tags,
            )
    (root / "ragkit.toml").write_text('[generator]\nname = "extractive"\n')
    return root


@asynccontextmanager
async def mcp_session(workspace: Path, index: Path, errlog: Path) -> AsyncIterator[ClientSession]:
    """An initialized client session with ``ragkit mcp --index INDEX`` (its stderr written to ``errlog``)."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "ragkit.cli", "mcp", "--index", str(index), "--config", str(workspace / "ragkit.toml")],
        env=CHILD_ENV,
        cwd=workspace,
    )
    with errlog.open("w") as err:
        async with stdio_client(params, errlog=err) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=60) as session:
                await session.initialize()
                yield session


def files_of(directory: Path) -> dict[str, str]:
    """Each data file's content hash; SQLite's ``-shm``/``-wal`` files are left out (any SQLite reader of a WAL
    database maps and may create them: they hold locks, not data)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.rglob("*")
        if p.is_file() and not p.name.endswith(("-shm", "-wal"))
    }


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def call(session: ClientSession, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    return await session.call_tool(tool, arguments)


async def test_retrieve_and_ask_over_stdio(workspace: Path, tmp_path: Path) -> None:
    before = files_of(workspace / "idx")
    async with mcp_session(workspace, workspace / "idx", tmp_path / "stderr.txt") as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(tools) == {"retrieve", "ask"}
        for tool in tools.values():
            assert len(tool.description or "") > 200 and "dense" in (tool.description or "")
            assert tool.input_schema["properties"]["k"]["maximum"] >= 10
            assert tool.output_schema is not None and tool.annotations and tool.annotations.read_only_hint
        assert tools["retrieve"].input_schema["required"] == ["query"]
        assert tools["ask"].input_schema["required"] == ["question"]

        # the one document that answers comes first; hits are what Index.retrieve gives in this process
        query = "How do axolotls regrow lost limbs?"
        found = await call(session, "retrieve", {"query": query, "k": 3})
        assert not found.is_error, text_of(found)
        hits = found.structured_content["hits"]
        assert hits[0]["doc_id"] == "axolotl" and hits[0]["rank"] == 1
        settings = load_settings(workspace / "ragkit.toml")
        with Index.open(workspace / "idx", settings) as index:
            expected = index.retrieve(query, k=3)
        assert [set(h) for h in hits] == [set(hit_json(1, h)) for h in expected]  # ragkit ask --json's fields
        assert [h["chunk_id"] for h in hits] == [h.chunk.id for h in expected]
        assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected])
        readable = text_of(found)
        assert readable.index(BIO["axolotl"]) < readable.index("[2]") and "notes/axolotl.md" in readable

        # where filters to tagged documents: kepler comes first without it and never with it
        planets = "Kepler orbital period of a planet around the sun"
        unfiltered = await call(session, "retrieve", {"query": planets, "k": 4})
        assert unfiltered.structured_content["hits"][0]["doc_id"] == "kepler"
        filtered = await call(session, "retrieve", {"query": planets, "k": 4, "where": {"team": "bio"}})
        assert not filtered.is_error, text_of(filtered)
        assert {h["doc_id"] for h in filtered.structured_content["hits"]} <= set(BIO)

        answered = await call(session, "ask", {"question": query, "k": 3})
        assert not answered.is_error, text_of(answered)
        answer = answered.structured_content
        assert answer["generator"] == "extractive" and answer["degraded"] is False
        assert "[1]" in answer["answer"] and "regrow" in answer["answer"]
        assert answer["citations"][0]["number"] == 1 and answer["citations"][0]["doc_id"] == "axolotl"
        assert answer["answer"] in text_of(answered) and "notes/axolotl.md" in text_of(answered)

        stats = await session.read_resource("ragkit://index/stats")
        assert '"documents": 4' in stats.contents[0].text
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()
    assert files_of(workspace / "idx") == before  # a reader never writes


# each fails on its own account: a schema check, a check of ours, ragkit's mode check, an unknown tool
BAD_CALLS = [
    ("retrieve", {"query": "axolotls", "k": 0}, "k must be between 1 and 100 (got 0)"),
    ("ask", {"question": "axolotls?", "k": 101}, "k must be between 1 and 100 (got 101)"),
    ("retrieve", {"query": "axolotls", "mode": "telepathy"}, "unknown retrieval mode 'telepathy'"),
    ("ask", {"question": "axolotls?", "mode": "telepathy"}, "valid: auto, bm25, dense"),
    ("retrieve", {"query": "   "}, "query is empty"),
    ("retrieve", {"query": "axolotls", "k": "many"}, "Input should be a valid integer"),
    ("ask", {"k": 3}, "Field required"),
    ("retrieve", {"query": "axolotls", "where": ["team", "bio"]}, "Input should be a valid dictionary"),
    ("summarize", {"text": "axolotls"}, "summarize"),
]


async def test_bad_calls_are_tool_errors_and_the_session_goes_on(workspace: Path, tmp_path: Path) -> None:
    async with mcp_session(workspace, workspace / "idx", tmp_path / "stderr.txt") as session:
        for tool, arguments, message in BAD_CALLS:
            result = await call(session, tool, arguments)
            assert result.is_error, f"{tool}({arguments}) succeeded: {text_of(result)}"
            assert message in text_of(result), text_of(result)
        after = await call(session, "retrieve", {"query": "Which animal survives dehydration?", "k": 1})
        assert not after.is_error and after.structured_content["hits"][0]["doc_id"] == "tardigrade"
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()


def test_missing_index_is_one_clear_error_and_nothing_on_stdout(tmp_path: Path) -> None:
    result = run_ragkit("mcp", "--index", tmp_path / "nowhere", cwd=tmp_path, env=CHILD_ENV, timeout=120)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "ragkit mcp: error:" in result.stderr and "no index here" in result.stderr
    assert str(tmp_path / "nowhere") in result.stderr


def test_serves_until_stdin_closes_and_prints_nothing_but_the_protocol(workspace: Path) -> None:
    """With stdin closed at once the server exits 0 without having written a byte to stdout: nothing printed while
    the index opens and the embedder loads can corrupt the protocol stream."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "ragkit.cli", "mcp", "--index", str(workspace / "idx")],
        cwd=workspace, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        env={**os.environ, **CHILD_ENV},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
