"""IndexStore: readers never write, writers and `ragkit repair` save what is behind, and Index.create's choices."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ragkit import Index
from ragkit.cli import main
from ragkit.connectors.vectors.faiss import FaissShardedIndex
from ragkit.errors import ConfigError, IndexFormatError
from ragkit.testing import HashingEmbedder, assert_index_consistent
from ragkit.types import Document

DOCS = [Document(id=f"d{i}", text=f"alpha{i} beta{i} gamma shared words {i}", source=f"s{i}") for i in range(40)]


def files_of(directory: Path) -> dict[str, str]:
    """Content hashes of the index's files, but SQLite's own shared-memory file and an empty WAL it created."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.endswith("-shm"):
            data = path.read_bytes()
            if path.name.endswith("-wal") and not data:
                continue
            found[str(path.relative_to(directory))] = hashlib.sha256(data).hexdigest()
    return found


def build(path: Path) -> None:
    with Index.create(path, embedder=HashingEmbedder(64), graph=False) as index:
        index.add_documents(DOCS)


def answers(index: Index) -> dict[str, list[list[str]]]:
    queries = ["alpha3 beta3", "gamma shared words 17", "beta39"]
    return {
        mode: [[h.chunk.id for h in hits] for hits in index.retrieve_many(queries, k=5, mode=mode)]
        for mode in ("dense", "bm25", "hybrid")
    }


def test_opening_and_querying_writes_nothing(tmp_path: Path) -> None:
    build(tmp_path / "idx")
    before = files_of(tmp_path / "idx")
    with Index.open(tmp_path / "idx") as index:
        answers(index)
        index.stats()
    assert files_of(tmp_path / "idx") == before


def test_a_reader_answers_from_memory_when_derived_state_is_behind_and_repair_saves_it(tmp_path: Path) -> None:
    build(tmp_path / "idx")
    with Index.open(tmp_path / "idx") as index:
        expected = answers(index)
    # as if the last run was killed after its catalog commits: the saved vectors and BM25 lag behind
    (tmp_path / "idx" / "vectors.json").write_text(json.dumps({"generation": 0}))
    (tmp_path / "idx" / "bm25.json").unlink()
    before = files_of(tmp_path / "idx")
    with Index.open(tmp_path / "idx") as index:
        assert answers(index) == expected
        generations = index.store.saved_generations()
        assert generations["vectors"] == 0 and generations["bm25"] is None
    assert files_of(tmp_path / "idx") == before  # the reader repaired nothing on disk

    assert main(["repair", "--index", str(tmp_path / "idx"), "--json"]) == 0
    with Index.open(tmp_path / "idx") as index:
        generations = index.store.saved_generations()
        assert generations["vectors"] == generations["bm25"] == generations["catalog"]
        assert_index_consistent(index)
        assert answers(index) == expected


def test_open_with_repair_saves_what_is_behind(tmp_path: Path) -> None:
    build(tmp_path / "idx")
    (tmp_path / "idx" / "bm25.json").unlink()
    with Index.open(tmp_path / "idx", repair=True) as index:
        assert index.store.saved_generations()["bm25"] == index.catalog.generation


def test_create_takes_the_common_choices_as_keywords(tmp_path: Path) -> None:
    with Index.create(tmp_path / "a", embedder="hashing-32", graph=False, shards=3, kind="hnsw") as index:
        assert index.manifest.embedder == "hashing-32" and index.manifest.dimension == 32
        assert index.manifest.graph is False
        assert index.manifest.vectors["shards"] == 3 and index.manifest.vectors["kind"] == "hnsw"
        index.add_documents(DOCS[:5])
        assert index.retrieve(DOCS[2].text, k=1, mode="dense")[0].chunk.doc_id == "d2"
    with pytest.raises(ConfigError, match="vectors.backend"):
        Index.create(tmp_path / "b", embedder="hashing-32", backend="nosuch")


def test_an_index_over_your_own_vector_index(tmp_path: Path) -> None:
    mine = FaissShardedIndex(tmp_path / "my-vectors", 64, shards=2)
    with Index.create(tmp_path / "idx", embedder=HashingEmbedder(64), graph=False, vectors=mine) as index:
        index.add_documents(DOCS)
        assert index.manifest.vectors["backend"] == "external"
        assert len(mine) == len(DOCS)
        assert index.retrieve(DOCS[7].text, k=1, mode="dense")[0].chunk.doc_id == "d7"
    with pytest.raises(IndexFormatError, match="pass it again"):
        Index.open(tmp_path / "idx")
    with Index.open(tmp_path / "idx", vectors=FaissShardedIndex(tmp_path / "my-vectors", 64, shards=2)) as index:
        assert index.retrieve(DOCS[9].text, k=1, mode="dense")[0].chunk.doc_id == "d9"
        index.delete("d9")
        assert all(h.chunk.doc_id != "d9" for h in index.retrieve(DOCS[9].text, k=5, mode="dense"))


def test_no_core_module_imports_the_facade() -> None:
    """Pipelines, graph and connectors receive the IndexStore; only the adapters, which wrap the public
    ``ragkit.Index`` for LangChain and LlamaIndex users, may import it."""
    import ast

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for package in ("pipelines", "graph", "connectors"):
        for path in sorted((root / package).rglob("*.py")):
            if "adapters" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "ragkit.index":
                    offenders.append(str(path.relative_to(root)))
                elif isinstance(node, ast.Import) and any(a.name == "ragkit.index" for a in node.names):
                    offenders.append(str(path.relative_to(root)))
    assert offenders == []


class FirstWordRetriever:
    """The retrieval mode of docs/architecture.md's example: BM25 over the question's first word only."""

    name = "first-word"

    def __init__(self, store) -> None:  # the open index's IndexStore
        self.store = store

    def search(self, queries, k, where=None):
        bm25 = self.store.bm25()
        return [[(cid, score, None) for cid, score in row] for row in bm25.search([q.split()[0] for q in queries], k)]


def test_a_retrieval_mode_registers_like_a_plugin(tmp_path: Path) -> None:
    from ragkit.registry import retrieval_modes

    build(tmp_path / "idx")
    retrieval_modes.register("first-word", FirstWordRetriever)
    try:
        from ragkit.config import parse_settings

        assert parse_settings({"retrieval": {"mode": "first-word"}}).retrieval.mode == "first-word"
        with Index.open(tmp_path / "idx") as index:
            hits = index.retrieve("beta12 alpha30", k=1, mode="first-word")
            assert [h.chunk.doc_id for h in hits] == ["d12"] and hits[0].retriever == "first-word"
    finally:
        retrieval_modes.unregister("first-word")
    with pytest.raises(ConfigError, match="unknown retrieval mode .first-word."), Index.open(tmp_path / "idx") as index:
        index.retrieve("beta12", mode="first-word")


PRIVATE_READER = """
import os, sys
import ragkit.sqlitedb as sqlitedb
if os.getuid() == 0:
    os.setgid(65534)
    os.setuid(65534)  # nobody: the read-only folder is really read-only
conn = sqlitedb.connect(__import__("pathlib").Path(sys.argv[1]), read_only=True)
print(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])
"""


def test_a_reader_in_a_read_only_folder_sees_what_a_killed_writer_left_in_the_wal(tmp_path: Path) -> None:
    """SQLite cannot recover a killed writer's WAL without writing: the reader reads a private copy instead."""
    import os
    import subprocess
    import sys
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ragkit-ro-wal-"))
    try:
        db = root / "db.sqlite"
        writer = (
            "import sqlite3, os, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0'); "
            "c.execute('CREATE TABLE t(x)'); [c.execute('INSERT INTO t VALUES (?)', (i,)) for i in range(5)]; "
            "os._exit(0)"  # killed: five committed rows are in the WAL only
        )
        subprocess.run([sys.executable, "-c", writer, str(db)], check=True)
        Path(f"{db}-shm").unlink(missing_ok=True)  # its index is gone: reading the WAL needs a recovery
        (root / "reader.py").write_text(PRIVATE_READER)
        before = {p.name: p.read_bytes() for p in root.iterdir()}
        for path in [root, *root.iterdir()]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        result = subprocess.run(
            [sys.executable, str(root / "reader.py"), str(db)], capture_output=True, text=True, timeout=120,
            env=dict(os.environ, HOME=str(root)),
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "5"
        assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    finally:
        for path in [root, *root.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(root, ignore_errors=True)
