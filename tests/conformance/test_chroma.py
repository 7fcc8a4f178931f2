"""Chroma passes the conformance suite: a persistent directory in the index (one collection and three) and a
Chroma server started on loopback (``chroma run``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ragkit.conformance import IndexFactory
from ragkit.errors import ConfigError, DimensionMismatchError, IndexFormatError
from ragkit.protocols import VectorIndex
from ragkit.testing import VectorIndexConformance

pytest.importorskip("chromadb", reason="the Chroma backend needs the 'chroma' extra")

from ragkit.connectors.vectors.chroma import ChromaIndex, where_clause  # noqa: E402


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Chroma server (the ``chroma`` CLI that chromadb ships) on a free loopback port; yields the port."""
    binary = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if binary is None:
        pytest.skip("the chroma CLI that ships with chromadb is not on PATH")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path_factory.mktemp("chroma-server")
    log = open(data / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    command = [binary, "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"chroma run exited with {server.returncode}: {(data / 'server.log').read_text()}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"chroma run did not listen on port {port} within 60 s")
                time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module", params=["1shard", "3shard", "server"])
def chroma_setup(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def exact_search() -> bool:
    return False  # Chroma searches an HNSW graph


@pytest.fixture(scope="module")
def make_index(chroma_setup: str, request: pytest.FixtureRequest) -> IndexFactory:
    if chroma_setup == "server":
        port = request.getfixturevalue("chroma_server")

        def on_server(directory: Path, dim: int) -> VectorIndex:
            # One server for the module: each test directory gets its own collection.
            name = "t" + hashlib.sha1(str(directory).encode()).hexdigest()[:20]
            return ChromaIndex(None, dim, collection=name, host="127.0.0.1", port=port)

        return on_server
    shards = int(chroma_setup.removesuffix("shard"))

    def local(directory: Path, dim: int) -> VectorIndex:
        return ChromaIndex(directory / "chroma", dim, shards=shards)

    return local


class TestChromaConformance(VectorIndexConformance):
    pass


# -- what the suite cannot see --


def test_where_clause() -> None:
    assert where_clause(None) is None and where_clause({}) is None
    assert where_clause({"tenant": "acme"}) == {"tenant": {"$eq": "acme"}}
    assert where_clause({"tenant": "acme", "n": np.int64(3), "ok": True}) == {
        "$and": [{"tenant": {"$eq": "acme"}}, {"n": {"$eq": 3}}, {"ok": {"$eq": True}}]
    }
    with pytest.raises(ValueError, match="only str, int, float and bool"):
        where_clause({"tenant": None})


def test_needs_exactly_one_of_path_or_server(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="path"):
        ChromaIndex(None, 4)
    with pytest.raises(ConfigError, match="host"):
        ChromaIndex(tmp_path, 4, host="127.0.0.1")


def test_reopening_with_other_shards_or_dim_is_refused(tmp_path: Path) -> None:
    with ChromaIndex(tmp_path, 4, shards=3) as index:
        index.add(np.arange(6), np.eye(6, 4, dtype=np.float32), [{"n": i} for i in range(6)])
        assert len(index) == 6
    with pytest.raises(IndexFormatError, match="shards=3.*shards=2"):
        ChromaIndex(tmp_path, 4, shards=2)
    with pytest.raises(DimensionMismatchError, match="dimension 4, but 8"):
        ChromaIndex(tmp_path, 8, shards=3)
    with ChromaIndex(tmp_path, 4, shards=3) as index:
        assert sorted(index.ids().tolist()) == list(range(6))


def test_leaves_the_environment_alone(tmp_path: Path) -> None:
    before = dict(os.environ)
    with ChromaIndex(tmp_path, 4) as index:
        index.add(np.arange(2), np.eye(2, 4, dtype=np.float32), [{}, {"a": 1}])  # empty metadata is fine
        assert len(index) == 2
    assert dict(os.environ) == before


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "chromadb", None)
    with pytest.raises(ImportError, match=r"pip install 'ragkit\[chroma\]'"):
        ChromaIndex(tmp_path, 4)
