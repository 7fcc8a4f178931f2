"""Tampered indexes: opening one never executes code from it (nothing on disk is a pickle, nothing is
unpickled), and a tampered or truncated catalog, manifest, shard or derived file gives a clear error naming
the file, or is recovered from correctly, never a wrong answer and never a crash with a traceback.

Every file of a real index is in turn emptied, truncated, overwritten with garbage, replaced by a pickle
whose unpickling would create a marker file, and (JSON, NumPy and SQLite files) given well-formed but wrong
content. Each tampered copy is then used through the API (stats, every retrieval mode, a ``where`` filter,
indexing a new file) and, for one tampering per file, through the CLI.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import pickletools
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragkit import Index, Settings
from ragkit.errors import RagkitError

ROOT = Path(__file__).resolve().parents[1]
MARKER_NAME = "UNPICKLED-CODE-RAN"
QUERIES = ["alpha beta orchard", "river delta number7", "gamma"]


class Payload:
    """Unpickling this creates a marker file: proof that code from the index ran."""

    marker = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def payload_bytes(marker: Path) -> bytes:
    Payload.marker = str(marker)
    return pickle.dumps(Payload(), protocol=4)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


# -- the index every case starts from ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tamper")
    corpus = root / "corpus"
    corpus.mkdir()
    rng = random.Random(1)
    words = "alpha beta gamma delta river orchard lantern quartz meadow falcon harbor copper".split()
    for i in range(40):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(rng.choices(words, k=40)) + f" number{i}.")
    (root / "new").mkdir()
    (root / "new" / "late.txt").write_text("a late document about lanterns and harbors")
    settings = Settings().merged(
        graph={"enabled": False}, embedder={"model": "hashing-64"}, chunking={"max_tokens": 16, "overlap": 2}
    )
    path = root / "pristine"
    source = str((corpus / "doc03.txt").resolve())
    with Index.create(path, settings) as index:
        index.add([corpus])
        answers = answers_of(index, source)
    assert answers["where"] and all(answers[mode] for mode in ("dense", "bm25", "hybrid"))
    return {"root": root, "path": path, "answers": answers, "source": source}


def answers_of(index: Index, source: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"counts": index.catalog.counts()}
    for mode in ("dense", "bm25", "hybrid"):
        result[mode] = [
            [(h.chunk.id, round(h.score, 4)) for h in hits]
            for hits in index.retrieve_many(QUERIES, k=5, mode=mode)
        ]
    if source is not None:
        result["where"] = sorted(
            h.chunk.id for h in index.retrieve("alpha", k=100, mode="dense", where={"source": source})
        )
    return result


# -- tamperings ---------------------------------------------------------------------------------------------

Tamper = Callable[[Path, Path], None]  # (file, marker) -> None


def _write(content: bytes | Callable[[bytes, Path], bytes]) -> Tamper:
    def tamper(file: Path, marker: Path) -> None:
        file.write_bytes(content(file.read_bytes(), marker) if callable(content) else content)

    return tamper


def _json(change: Callable[[Any], Any]) -> Tamper:
    def tamper(file: Path, marker: Path) -> None:
        file.write_text(json.dumps(change(json.loads(file.read_text()))))

    return tamper


def _sql(statement: str) -> Tamper:
    def tamper(file: Path, marker: Path) -> None:
        conn = sqlite3.connect(file)
        conn.executescript(statement)
        conn.close()

    return tamper


GENERIC: dict[str, Tamper] = {
    "empty": _write(b""),
    "truncated": _write(lambda data, marker: data[: len(data) // 2]),
    "garbage": _write(lambda data, marker: random.Random(len(data)).randbytes(max(64, len(data)))),
    "pickle": _write(lambda data, marker: payload_bytes(marker)),
}

FILES = [
    "manifest.json",
    "catalog.sqlite",
    "embeddings.sqlite",
    "vectors.json",
    "faiss/faiss.json",
    "faiss/shard-000.faiss",
    "faiss/meta.sqlite",
    "bm25.json",
    "bm25-1/chunk_ids.json",
    "bm25-1/params.index.json",
    "bm25-1/vocab.index.json",
    "bm25-1/data.csc.index.npy",
    "bm25-1/indices.csc.index.npy",
    "bm25-1/indptr.csc.index.npy",
]

SPECIFIC: dict[str, dict[str, Tamper]] = {
    "manifest.json": {
        "json-list": _json(lambda d: [d]),
        "json-null": _json(lambda d: None),
        "embedder-not-a-string": _json(lambda d: {**d, "embedder": 7}),
        "unknown-embedder": _json(lambda d: {**d, "embedder": "no-such-model-anywhere"}),
        "dimension-text": _json(lambda d: {**d, "dimension": "64"}),
        "vectors-not-an-object": _json(lambda d: {**d, "vectors": "faiss"}),
        "unknown-backend": _json(lambda d: {**d, "vectors": {**d["vectors"], "backend": "pickledb"}}),
        "shards-text": _json(lambda d: {**d, "vectors": {**d["vectors"], "shards": "many"}}),
        "graph-text": _json(lambda d: {**d, "graph": "yes"}),
    },
    "catalog.sqlite": {
        "renamed-column": _sql("ALTER TABLE chunks RENAME COLUMN text TO body;"),
        "meta-not-json": _sql("UPDATE chunks SET meta = '{not json';"),
        "meta-not-object": _sql("UPDATE chunks SET meta = '[1, 2]';"),
        "generation-text": _sql("UPDATE state SET value = 'many' WHERE key = 'generation';"),
        "dropped-table": _sql("DROP TABLE chunks;"),
        # SQL in the schema is the catalog's only "code": it can never load an extension (native code)
        "trigger-loads-extension": _sql(
            "CREATE TRIGGER evil BEFORE INSERT ON chunks BEGIN SELECT load_extension('/tmp/evil.so'); END;"
        ),
    },
    "embeddings.sqlite": {"dropped-table": _sql("DROP TABLE vectors;")},
    "vectors.json": {
        "json-list": _json(lambda d: [d]),
        "generation-text": _json(lambda d: {"generation": "x"}),
        "generation-behind": _json(lambda d: {"generation": -1}),  # looks like an interrupted run: recovered
    },
    "faiss/faiss.json": {"json-list": _json(lambda d: [d]), "json-null": _json(lambda d: None)},
    "faiss/meta.sqlite": {"rows-deleted": _sql("DELETE FROM meta;")},
    "bm25.json": {
        "json-list": _json(lambda d: [d]),
        "dir-escapes": _json(lambda d: {**d, "dir": "../../etc"}),
        "dir-missing": _json(lambda d: {**d, "dir": "bm25-99"}),
        "generation-text": _json(lambda d: {**d, "generation": "x"}),
    },
    "bm25-1/chunk_ids.json": {
        "json-null": _json(lambda d: None),
        "too-few": _json(lambda d: d[:-3]),
        "not-strings": _json(lambda d: [1] * len(d)),
    },
    "bm25-1/params.index.json": {
        "json-null": _json(lambda d: None),
        "num-docs-wrong": _json(lambda d: {**d, "num_docs": d["num_docs"] + 5}),
        "dtype-bad": _json(lambda d: {**d, "dtype": "no-such-type"}),
        "int-dtype-float": _json(lambda d: {**d, "int_dtype": "float32"}),
        "unknown-key": _json(lambda d: {**d, "exec": "print(1)"}),
    },
    "bm25-1/vocab.index.json": {
        "json-list": _json(lambda d: list(d)),
        "id-out-of-range": _json(lambda d: {k: v + 1000 for k, v in d.items()}),
    },
    **{
        f"bm25-1/{name}": {
            "object-array": _write(lambda data, marker: npy_bytes(np.array([Payload()], dtype=object), True)),
            "short-array": _write(lambda data, marker: npy_bytes(np.arange(3, dtype=np.float32))),
            "2d-array": _write(lambda data, marker: npy_bytes(np.zeros((2, 2), dtype=np.int64))),
        }
        for name in ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy")
    },
}


def cases() -> Iterator[Any]:
    for rel in FILES:
        for kind in (*GENERIC, *SPECIFIC.get(rel, {})):
            yield pytest.param(rel, kind, id=f"{rel}-{kind}")


def tampered_copy(pristine: dict[str, Any], rel: str, kind: str, name: str) -> tuple[Path, Path]:
    path = pristine["root"] / name
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(pristine["path"], path)
    marker = pristine["root"] / f"{name}-{MARKER_NAME}"
    marker.unlink(missing_ok=True)
    Payload.marker = str(marker)
    tamper = GENERIC.get(kind) or SPECIFIC[rel][kind]
    tamper(path / rel, marker)
    return path, marker


def names_file(message: str, rel: str) -> bool:
    return rel in message or Path(rel).name in message


# -- the API ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rel", "kind"), list(cases()))
def test_api_on_a_tampered_file(pristine, rel, kind):
    """Every use of the index either answers exactly as before or raises a RagkitError naming the file."""
    path, marker = tampered_copy(pristine, rel, kind, "api")
    try:
        with Index.open(path) as index:
            got = answers_of(index, pristine["source"])
            for part, want in pristine["answers"].items():
                assert got[part] == want, f"a tampered index answered differently ({part}) without an error"
            index.add(
                [pristine["root"] / "new"]
            )  # writes: catalog transaction, embedding cache, vectors, BM25
            assert index.retrieve("late lanterns harbors", k=1, mode="hybrid")[0].source.endswith("late.txt")
    except RagkitError as exc:
        assert names_file(str(exc), rel), f"the error does not name {rel}: {exc}"
    assert not marker.exists(), "code from the index ran"


# -- the CLI ------------------------------------------------------------------------------------------------

CLI_CASES = [
    ("manifest.json", "truncated"),
    ("manifest.json", "vectors-not-an-object"),
    ("catalog.sqlite", "garbage"),
    ("catalog.sqlite", "renamed-column"),
    ("catalog.sqlite", "meta-not-json"),
    ("vectors.json", "garbage"),
    ("faiss/shard-000.faiss", "truncated"),
    ("faiss/shard-000.faiss", "pickle"),
    ("faiss/faiss.json", "json-list"),
    ("faiss/meta.sqlite", "garbage"),
    ("bm25.json", "garbage"),
    ("bm25-1/data.csc.index.npy", "object-array"),
    ("bm25-1/vocab.index.json", "truncated"),
    ("bm25-1/indptr.csc.index.npy", "short-array"),
]


def ragkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "ragkit.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(("rel", "kind"), CLI_CASES, ids=[f"{r}-{k}" for r, k in CLI_CASES])
def test_cli_on_a_tampered_file(pristine, rel, kind):
    """``ragkit ask`` fails with one line naming the file (exit 1, no traceback); ``stats`` too, or
    succeeds when
    it does not read that file."""
    path, marker = tampered_copy(pristine, rel, kind, f"cli-{rel.replace('/', '_')}-{kind}")
    commands = {
        "ask": ["ask", "alpha beta", "--index", str(path), "--mode", "hybrid", "--generator", "extractive"],
        "stats": ["stats", "--index", str(path)],
    }
    with ThreadPoolExecutor(2) as pool:
        results = dict(
            zip(
                commands,
                pool.map(lambda args: ragkit(*args, cwd=pristine["root"]), commands.values()),
                strict=True,
            )
        )
    for name, result in results.items():
        assert "Traceback" not in result.stderr, f"{name}: {result.stderr}"
        if result.returncode == 0 and name == "stats":
            continue
        assert result.returncode == 1, f"{name}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and names_file(lines[0], rel), f"{name}: {result.stderr}"
    assert not marker.exists(), "code from the index ran"


def test_cli_index_into_a_tampered_index(pristine):
    """``ragkit index`` into an index whose embedding cache is damaged: one clear line, no traceback."""
    path, marker = tampered_copy(pristine, "embeddings.sqlite", "garbage", "cli-index")
    result = ragkit("index", str(pristine["root"] / "new"), "--index", str(path), cwd=pristine["root"])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "embeddings.sqlite" in lines[0], result.stderr


# -- no pickle anywhere -------------------------------------------------------------------------------------

PICKLE_HEADERS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def is_pickle(data: bytes) -> bool:
    """Whether ``data`` is a pickle stream: a protocol 2-5 header and opcodes that parse up to STOP (parsed by
    pickletools, never executed). Binary files such as hnswlib's ``length.bin`` may start with the same two bytes
    by chance; they do not parse."""
    if data[:2] not in PICKLE_HEADERS:
        return False
    try:
        names = [opcode.name for opcode, _, _ in pickletools.genops(data)]
    except Exception:  # noqa: BLE001 - any parse error: not a pickle
        return False
    return bool(names) and names[-1] == "STOP"


@pytest.mark.parametrize("backend", ["faiss", "milvus", "chroma"])
def test_no_pickle_on_disk(tmp_path, pristine, backend):
    settings = Settings().merged(
        graph={"enabled": False},
        embedder={"model": "hashing-64"},
        chunking={"max_tokens": 16, "overlap": 2},
        vectors={"backend": backend, "shards": 2},
    )
    with Index.create(tmp_path / "idx", settings) as index:
        index.add([pristine["root"] / "corpus"])
        index.delete(pristine["source"])
        index.retrieve("alpha", mode="hybrid")
    files = [p for p in (tmp_path / "idx").rglob("*") if p.is_file()]
    assert files
    for file in files:
        assert file.suffix not in (".pkl", ".pickle", ".joblib", ".pt"), file
        assert not is_pickle(file.read_bytes()), file
        if file.suffix == ".npy":
            np.load(file, allow_pickle=False)  # raises for object (pickled) arrays


def test_chroma_pickle_planted_in_its_segment_is_never_executed(tmp_path, pristine):
    """Chroma's legacy HNSW segments kept ``index_metadata.pickle``; a planted one must never run."""
    settings = Settings().merged(
        graph={"enabled": False},
        embedder={"model": "hashing-64"},
        chunking={"max_tokens": 16, "overlap": 2},
        vectors={"backend": "chroma"},
    )
    with Index.create(tmp_path / "idx", settings) as index:
        index.add([pristine["root"] / "corpus"])
    marker = tmp_path / MARKER_NAME
    segments = [p for p in (tmp_path / "idx" / "chroma").iterdir() if p.is_dir()]
    assert segments
    for segment in segments:
        (segment / "index_metadata.pickle").write_bytes(payload_bytes(marker))
    try:
        with Index.open(tmp_path / "idx") as index:
            index.retrieve("alpha beta", k=3, mode="dense")
    except Exception:  # noqa: BLE001 - whatever Chroma makes of it, only whether the pickle ran matters here
        pass
    assert not marker.exists(), "Chroma unpickled code from the index"


SOURCES = ["ragkit", "connectors", "graph", "pipelines", "eval"]


def test_pickle_detection():
    """The check above catches real pickles and lets binary data with a pickle-like first two bytes pass."""
    assert is_pickle(pickle.dumps({"a": [1, 2]}, protocol=4)) and is_pickle(payload_bytes(Path("/nonexistent")))
    assert not is_pickle(b"\x80\x02" + bytes(range(256)) * 4) and not is_pickle(b"SQLite format 3\x00")


def _parse(file: Path) -> ast.Module:
    """``ast.parse``, retried: CPython 3.11.7 can raise "SystemError: AST constructor recursion depth mismatch" when
    another thread of the process (a server or worker thread a previous test left running) compiles at the same
    moment (python/cpython#106905, fixed in later releases). The error is the race, not the file."""
    for attempt in range(5):
        try:
            return ast.parse(file.read_text(), filename=str(file))
        except SystemError:
            if attempt == 4:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def test_code_never_unpickles():
    """No pickle.load(s), torch.load, joblib/dill/marshal loads, eval/exec, and numpy loads only with
    allow_pickle=False, anywhere in ragkit's code."""
    problems = []
    for folder in SOURCES:
        for file in sorted((ROOT / folder).rglob("*.py")):
            tree = _parse(file)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names] + (
                        [node.module] if isinstance(node, ast.ImportFrom) else []
                    )
                    if {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "marshal", "shelve"} & set(
                        names
                    ):
                        problems.append(f"{file}:{node.lineno}: imports {names}")
                if not isinstance(node, ast.Call):
                    continue
                func = ast.unparse(node.func)
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if func in ("eval", "exec", "torch.load", "pickle.load", "pickle.loads"):
                    problems.append(f"{file}:{node.lineno}: {func}(...)")
                if func.endswith(("np.load", "numpy.load")) and keywords.get("allow_pickle") != "False":
                    problems.append(f"{file}:{node.lineno}: {func} without allow_pickle=False")
                if keywords.get("allow_pickle") == "True":
                    problems.append(f"{file}:{node.lineno}: allow_pickle=True")
    assert not problems, "\n".join(problems)
