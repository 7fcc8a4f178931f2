"""Concurrency: reader threads and reader processes query an index while another process indexes into it.

The writer process runs many incremental ``Index.add(..., sync=True)`` rounds (new, changed and deleted
files) in small catalog batches, and records the catalog after every round. Readers (threads sharing one
open Index, a thread that opens the index for every query, a long-lived reader process and a reopening
reader process) query in dense, bm25 and hybrid mode the whole time. Checked: no reader ever gets an error;
every hit is a chunk some committed state holds, with that state's text, offsets and source; one result
never mixes two versions of a document; and once the writer is done, readers that were open all along answer
from the final state.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

from ragkit import Index, Settings

EMBEDDER = "hashing-64"
WORDS = [
    f"{a}{b}{c}"
    for a in ("bar", "cor", "dun", "fel", "gim", "hol", "kar", "lun")
    for b in "aeiou"
    for c in ("n", "x", "th", "m", "rk", "l")
]
MODES = ("dense", "bm25", "hybrid")
ROUNDS = 14

COMMON = textwrap.dedent(
    """
    import json, random, sys, time, traceback
    from pathlib import Path

    WORDS = WORDS_LITERAL
    MODES = ("dense", "bm25", "hybrid")

    def write_doc(root, number, version):
        rng = random.Random(number * 1000 + version)
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(8, 14))).capitalize() + "." for _ in range(6)]
        (root / f"doc{number:03d}.txt").write_text(" ".join(sentences) + f" Marker{number}v{version}.")

    def record(hits):
        return [[h.chunk.id, h.chunk.doc_id, h.chunk.start, h.chunk.end, h.chunk.text, h.source]
                for h in hits]
    """
).replace("WORDS_LITERAL", repr(WORDS))

WRITER = COMMON + textwrap.dedent(
    """
    import ragkit.pipelines.indexing as indexing
    from ragkit import Index

    indexing.BATCH_CHUNKS = 24  # many small catalog transactions per run
    root, path, states, rounds = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(99)
    index = Index.open(path)
    live = sorted(int(p.stem[3:]) for p in root.glob("doc*.txt"))
    next_number = max(live) + 1
    for n in range(rounds):
        for _ in range(12):  # new files
            write_doc(root, next_number, 0)
            live.append(next_number)
            next_number += 1
        for number in rng.sample(live, 6):  # changed files
            write_doc(root, number, n + 1)
        for number in rng.sample(live, 3):  # deleted files
            (root / f"doc{number:03d}.txt").unlink()
            live.remove(number)
        index.add([root], sync=True)
        rows = index.catalog.connection.execute(
            "SELECT c.id, c.doc_id, c.start, c.end, c.text, d.content_hash, d.source "
            "FROM chunks c JOIN documents d ON d.id = c.doc_id"
        ).fetchall()
        (states / f"{n:03d}.json").write_text(json.dumps(rows))
    index.close()
    """
)

READER = COMMON + textwrap.dedent(
    """
    from ragkit import Index

    path, out, stop = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    reopen, seed = sys.argv[4] == "1", int(sys.argv[5])
    rng = random.Random(seed)
    shared = None if reopen else Index.open(path)
    with open(out, "w") as f:
        while not stop.exists():
            mode, query = rng.choice(MODES), " ".join(rng.sample(WORDS, 3))
            try:
                index = Index.open(path) if reopen else shared
                rec = {"mode": mode, "hits": record(index.retrieve(query, k=8, mode=mode))}
                if reopen:
                    index.close()
            except BaseException:
                rec = {"error": traceback.format_exc()}
            f.write(json.dumps(rec) + "\\n")
            f.flush()
        if shared is not None:  # the writer is done: this long-lived reader must answer from the final state
            chunks = [c for batch in shared.catalog.iter_chunks() for c in batch]
            missing = []
            for chunk in random.Random(seed).sample(chunks, min(30, len(chunks))):
                for mode in MODES:
                    hits = shared.retrieve(chunk.embed_text, k=10, mode=mode)
                    if chunk.id not in {h.chunk.id for h in hits}:
                        missing.append([mode, chunk.id])
            f.write(json.dumps({"final_missing": missing}) + "\\n")
    """
)


def write_doc(root: Path, number: int, version: int) -> None:
    namespace: dict[str, Any] = {}
    exec(COMMON, namespace)
    namespace["write_doc"](root, number, version)


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _hits(hits: list[Any]) -> list[list[Any]]:
    return [[h.chunk.id, h.chunk.doc_id, h.chunk.start, h.chunk.end, h.chunk.text, h.source] for h in hits]


def _catalog_rows(index: Index) -> list[list[Any]]:
    return [
        list(r)
        for r in index.catalog.connection.execute(
            "SELECT c.id, c.doc_id, c.start, c.end, c.text, d.content_hash, d.source "
            "FROM chunks c JOIN documents d ON d.id = c.doc_id"
        )
    ]


def check_results(records: list[dict[str, Any]], universe: dict[str, tuple[Any, ...]], who: str) -> int:
    """Every hit is a committed chunk (text, offsets, source as committed); one result, one version a doc."""
    errors = [r["error"] for r in records if "error" in r]
    assert not errors, f"{who}: {len(errors)} queries failed; first:\n{errors[0]}"
    results = 0
    for rec in records:
        if "hits" not in rec:
            continue
        results += 1
        versions: dict[str, str] = {}
        for chunk_id, doc_id, start, end, text, source in rec["hits"]:
            assert chunk_id in universe, (
                f"{who}: {rec['mode']} returned chunk {chunk_id} that no state committed"
            )
            c_doc, c_start, c_end, c_text, c_hash, c_source = universe[chunk_id]
            assert (doc_id, start, end, text, source) == (c_doc, c_start, c_end, c_text, c_source), who
            assert versions.setdefault(doc_id, c_hash) == c_hash, (
                f"{who}: one result mixes versions of {doc_id}"
            )
    return results


def test_readers_during_indexing(tmp_path):
    root, path, states, stop = tmp_path / "docs", tmp_path / "idx", tmp_path / "states", tmp_path / "stop"
    root.mkdir()
    states.mkdir()
    for number in range(80):
        write_doc(root, number, 0)
    settings = Settings().merged(
        graph={"enabled": False},
        embedder={"model": EMBEDDER},
        chunking={"max_tokens": 32, "overlap": 4},
        vectors={"shards": 2},
    )
    with Index.create(path, settings) as index:
        index.add([root])
        initial = _catalog_rows(index)
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "reader.py").write_text(READER)

    # reader processes: one keeps its index open, one opens it for every query
    readers = [
        subprocess.Popen(
            [
                sys.executable,
                str(tmp_path / "reader.py"),
                str(path),
                str(tmp_path / f"reader{n}.jsonl"),
                str(stop),
                str(n),
                str(n + 1),
            ],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (0, 1)
    ]
    # reader threads: three share one open index, one opens the index for every query
    shared = Index.open(path)
    records: dict[str, list[dict[str, Any]]] = {}
    writer_running = threading.Event()
    during: dict[str, int] = {}

    def read(name: str, seed: int, reopen: bool) -> None:
        rng = random.Random(seed)
        out = records.setdefault(name, [])
        while not stop.exists():
            mode, query = rng.choice(MODES), " ".join(rng.sample(WORDS, 3))
            try:
                index = Index.open(path) if reopen else shared
                out.append({"mode": mode, "hits": _hits(index.retrieve(query, k=8, mode=mode))})
                if reopen:
                    index.close()
            except BaseException:
                out.append({"error": traceback.format_exc()})
            if writer_running.is_set():
                during[name] = during.get(name, 0) + 1

    threads = [threading.Thread(target=read, args=(f"thread{n}", 10 + n, n == 3)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 120
        while not all(
            (tmp_path / f"reader{n}.jsonl").exists() and (tmp_path / f"reader{n}.jsonl").stat().st_size
            for n in (0, 1)
        ):
            assert time.monotonic() < deadline, "reader processes did not start"
            assert all(r.poll() is None for r in readers), [r.communicate() for r in readers]
            time.sleep(0.1)
        writer_running.set()
        started = time.monotonic()
        writer = subprocess.run(
            [sys.executable, str(tmp_path / "writer.py"), str(root), str(path), str(states), str(ROUNDS)],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        writer_running.clear()
        writer_seconds = time.monotonic() - started
        assert writer.returncode == 0, writer.stderr
    finally:
        stop.write_text("")
        for thread in threads:
            thread.join(timeout=120)
        outputs = [r.communicate(timeout=120) for r in readers]
    for reader, (_, err) in zip(readers, outputs, strict=True):
        assert reader.returncode == 0, err

    universe: dict[str, tuple[Any, ...]] = {}
    for rows in [initial, *(json.loads(p.read_text()) for p in sorted(states.glob("*.json")))]:
        for chunk_id, *rest in rows:
            assert universe.setdefault(chunk_id, tuple(rest)) == tuple(rest)
    assert len(list(states.glob("*.json"))) == ROUNDS

    for name, recs in records.items():
        check_results(recs, universe, name)
    for n in (0, 1):
        lines = [json.loads(line) for line in (tmp_path / f"reader{n}.jsonl").read_text().splitlines()]
        assert check_results(lines, universe, f"reader process {n}") >= 5, "the reader process barely ran"
        if n == 0:
            assert lines[-1] == {"final_missing": []}, f"long-lived reader process is stale: {lines[-1]}"
    assert sum(during.values()) >= 20, f"too little overlap with the writer ({during}, {writer_seconds:.1f}s)"

    # the threads' long-lived index now answers from the final state, like a freshly opened one
    final = json.loads(sorted(states.glob("*.json"))[-1].read_text())
    with Index.open(path) as fresh:
        assert sorted(map(list, _catalog_rows(fresh))) == sorted(map(list, final))
        assert set(fresh.vectors.ids().tolist()) == fresh.catalog.vector_ids()
    assert set(shared.vectors.ids().tolist()) == shared.catalog.vector_ids(), (
        "shared index kept stale vectors"
    )
    assert set(shared.bm25.chunk_ids) == {row[0] for row in final}
    sample = random.Random(3).sample(final, 30)
    for mode in MODES:
        found = shared.retrieve_many([row[4] for row in sample], k=10, mode=mode)
        for row, hits in zip(sample, found, strict=True):
            assert row[0] in {h.chunk.id for h in hits}, f"{mode}: the shared index cannot find {row[0]}"
    shared.close()


@pytest.mark.parametrize("mode", MODES)
def test_threads_share_one_index_while_it_is_written(tmp_path, mode):
    """Writer and readers in one process, one Index object: add() in one thread, retrieve() in others."""
    root = tmp_path / "docs"
    root.mkdir()
    for number in range(40):
        write_doc(root, number, 0)
    settings = Settings().merged(
        graph={"enabled": False}, embedder={"model": EMBEDDER}, chunking={"max_tokens": 32, "overlap": 4}
    )
    index = Index.create(tmp_path / "idx", settings)
    index.add([root])
    universe = {row[0]: tuple(row[1:]) for row in _catalog_rows(index)}
    done = threading.Event()
    errors: list[str] = []
    results: list[dict[str, Any]] = []

    def write() -> None:
        try:
            for n in range(6):
                for number in range(40 + 8 * n, 48 + 8 * n):
                    write_doc(root, number, 0)
                write_doc(root, n, n + 1)
                index.add([root], sync=True)
                for row in _catalog_rows(index):
                    universe.setdefault(row[0], tuple(row[1:]))
        except BaseException:
            errors.append(traceback.format_exc())
        finally:
            done.set()

    def read(seed: int) -> None:
        rng = random.Random(seed)
        while not done.is_set():
            try:
                results.append(
                    {
                        "mode": mode,
                        "hits": _hits(index.retrieve(" ".join(rng.sample(WORDS, 3)), k=8, mode=mode)),
                    }
                )
            except BaseException:
                errors.append(traceback.format_exc())

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read, args=(s,)) for s in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors[0]
    assert check_results(results, universe, "thread") >= 10
    assert set(index.vectors.ids().tolist()) == index.catalog.vector_ids()
    index.close()
