"""SIGKILL during an upload job: the index still opens and holds the upload wholly or not at all, and a restarted
server reports the interrupted job as failed and serves the index.

The real ``ragkit serve`` runs in a subprocess (through a driver that arms crash points, as
tests/test_crash_safety.py does for ``ragkit index``) over an index built with the hashing embedder, with
batches of 4 chunks so that a job spans several. The test uploads a multi-file job over HTTP and kills the
server at random moments within the job (a slow loader stretches the loading phase) or at named points:
inside the job's catalog transaction (past two batches' worth of documents), right after it committed, before
the vectors' generation stamp, before the BM25 save, and before the job's "done" record. Kills are chained:
the server restarted after one kill is the victim of the next, so every restart is also checked on an index
left by a crash.

Each job re-uploads the same 16 files with new text (an update of existing documents) plus 5 new files, so
both ways a job can land are watched: the 16 documents all at the new version or all at the previous one, and
the new documents all present or all absent, together.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import LOOPBACK, free_port

from ragkit import Index
from ragkit.serve.auth import add_key
from ragkit.serve.jobs import INTERRUPTED
from ragkit.testing import HashingEmbedder, assert_index_consistent

SLOW_S = 0.03  # seconds the driver's loader waits per file
BASE_FILES = 16  # with the new ones, more files than
NEW_FILES = 5  # ragkit serve indexes before its reply: a job

DRIVER = textwrap.dedent(
    r"""
    import os, signal, sys, time
    from contextlib import contextmanager
    from pathlib import Path

    import ragkit.cli
    import ragkit.pipelines.indexing
    from ragkit.bm25 import BM25Index
    from ragkit.catalog import Catalog
    from ragkit.connectors.loaders.text import load_text
    from ragkit.registry import loaders
    from ragkit.serve.jobs import JobManager
    from ragkit.store import VectorState

    ragkit.pipelines.indexing.BATCH_CHUNKS = 4  # a job of 21 files spans several batches
    CRASH_FILE = Path(os.environ["CRASH_FILE"])
    COUNTS = {}

    def hit(name):
        # the crash point is read when it is reached: a server started unarmed can be armed for its next job
        try:
            target, _, nth = CRASH_FILE.read_text().strip().rpartition(":")
        except OSError:
            return
        if name != target:
            return
        COUNTS[name] = COUNTS.get(name, 0) + 1
        if COUNTS[name] == int(nth):
            sys.stderr.write(f"crashing at {name}:{nth}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def before(owner, attr, name):
        original = getattr(owner, attr)
        def wrapper(*args, **kwargs):
            hit(name)
            return original(*args, **kwargs)
        setattr(owner, attr, wrapper)

    before(Catalog, "put_document", "txn-put")  # inside the job's one transaction
    original_transaction = Catalog.transaction
    @contextmanager
    def transaction(self):
        with original_transaction(self) as conn:
            yield conn
        hit("commit")  # committed; vectors and BM25 not saved yet
    Catalog.transaction = transaction
    before(VectorState, "mark_saved", "stamp")  # vectors saved, vectors.json not yet
    before(BM25Index, "save", "bm25-save")
    original_save = JobManager._save
    def save(self, job):
        if job.status == "done":
            hit("record-done")  # everything indexed, the job's record still says running
        return original_save(self, job)
    JobManager._save = save

    def slow_text(path, fields, max_file_bytes):
        time.sleep(float(os.environ["SLOW_S"]))
        yield from load_text(path, max_file_bytes)
    loaders.register(".slow", slow_text)

    sys.exit(ragkit.cli.main(sys.argv[1:]))
    """
)


class Workspace:
    """The index, the server's data dir, the driver and the running server of one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index_dir = root / "index"
        self.data_dir = root / "data"
        self.crash_file = root / "crash-at"
        self.driver = root / "driver.py"
        self.driver.write_text(DRIVER)
        self.config = root / "ragkit.toml"
        data_dir = json.dumps(str(self.data_dir))
        self.config.write_text(f'[generator]\nname = "extractive"\n[serve]\ndata_dir = {data_dir}\n')
        self.keys = root / "keys.toml"
        secret = add_key(self.keys, "uploader", tenant="acme", scopes=["read", "write"])
        self.headers = {"Authorization": f"Bearer {secret}"}
        Index.create(self.index_dir, embedder=HashingEmbedder(64), graph=False).close()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        """Start ``ragkit serve`` (through the driver) and wait until /readyz says ready."""
        port = free_port()
        self.url = f"http://{LOOPBACK}:{port}"
        env = dict(os.environ, SLOW_S=str(SLOW_S), CRASH_FILE=str(self.crash_file), HF_HUB_OFFLINE="1")
        argv = ["serve", "--index", str(self.index_dir), "--port", str(port), "--keys", str(self.keys)]
        with (self.root / "server.log").open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, str(self.driver), *argv, "--config", str(self.config)],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server died:\n{self.log_tail()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not start:\n{self.log_tail()}")

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def wait_for_crash(self, timeout: float = 60) -> None:
        """The armed server kills itself: wait for it."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the armed server did not crash:\n{self.log_tail()}") from None
        assert code == -signal.SIGKILL, f"exit {code}:\n{self.log_tail()}"

    def log_tail(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")[-3000:]

    def upload(self, version: int) -> str:
        """Upload the base files at ``version`` plus new ones; the job's id (answered 202)."""
        files = [
            ("files", (f"doc{i:02d}.slow", document_text(version, i).encode(), "text/plain")) for i in range(BASE_FILES)
        ] + [
            ("files", (f"new{version}-{i}.slow", document_text(version, 100 + i).encode(), "text/plain"))
            for i in range(NEW_FILES)
        ]
        response = httpx.post(f"{self.url}/v1/documents", files=files, headers=self.headers, timeout=30)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job"]["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/v1/jobs/{job_id}", headers=self.headers, timeout=10)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()["job"]
        return job

    def wait_job(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in ("done", "failed"):
                return job
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} did not finish")

    def listed_sources(self) -> set[str]:
        sources, cursor = set(), None
        while True:
            params: dict[str, Any] = {"limit": 5, **({"cursor": cursor} if cursor else {})}
            page = httpx.get(f"{self.url}/v1/documents", params=params, headers=self.headers, timeout=10).json()
            sources |= {d["source"] for d in page["documents"]}
            cursor = page["next_cursor"]
            if not cursor:
                return sources


def document_text(version: int, number: int) -> str:
    words = " ".join(f"filler{(number * 7 + j) % 23}" for j in range(60))
    return f"Version{version}Marker{number} belongs to version {version}. {words}. Version{version}Marker{number}."


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    ws = Workspace(tmp_path)
    yield ws
    if ws.process is not None and ws.process.poll() is None:
        ws.kill()


def check_state(ws: Workspace, base_ids: list[str], candidates: set[int]) -> tuple[int, set[int]]:
    """The one version all base documents are at (among ``candidates``), checked by a fresh reader of the
    index and by the running server, and the versions whose new files the server lists (each all or none)."""
    with Index.open(ws.index_dir) as reader:
        texts = reader.documents(base_ids)
        assert set(texts) == set(base_ids), "a base document disappeared"
        found = {v for v in candidates if all(f"Version{v}Marker" in d.text for d in texts.values())}
        assert len(found) == 1, {doc_id: d.text[:40] for doc_id, d in texts.items()}
        version = found.pop()
        hits = reader.retrieve(f"Version{version}Marker3", k=1, mode="bm25", where={"tenant": "acme"})
        assert hits and hits[0].chunk.doc_id == base_ids[3]
        # the vectors a reader searches are those of the catalog's chunks, exactly (caught up in memory)
        every_chunk = {c.id for batch in reader.catalog.iter_chunks() for c in batch}
        dense = reader.retrieve("version", k=len(every_chunk) + 10, mode="dense", where={"tenant": "acme"})
        assert {hit.chunk.id for hit in dense} == every_chunk
    response = httpx.post(
        f"{ws.url}/v1/retrieve", json={"query": f"Version{version}Marker3", "k": 1, "mode": "bm25"}, headers=ws.headers
    )
    assert response.status_code == 200 and response.json()["hits"][0]["doc_id"] == base_ids[3], response.text
    sources = ws.listed_sources()
    assert sources >= {f"doc{i:02d}.slow" for i in range(BASE_FILES)}
    new: dict[int, int] = {}
    for source in sources - {f"doc{i:02d}.slow" for i in range(BASE_FILES)}:
        v = int(source.removeprefix("new").split("-")[0])
        new[v] = new.get(v, 0) + 1
    assert all(count == NEW_FILES for count in new.values()), new  # a job's new files: all or none
    return version, set(new)


CRASH_POINTS = ["txn-put:9", "commit:1", "stamp:1", "bm25-save:1", "record-done:1"]
AFTER_COMMIT = {"commit:1", "stamp:1", "bm25-save:1", "record-done:1"}


def test_sigkill_during_upload_jobs_leaves_them_whole_or_absent(workspace: Workspace) -> None:
    ws = workspace
    ws.start()
    started = time.monotonic()
    baseline = ws.wait_job(ws.upload(0))
    duration = time.monotonic() - started
    assert baseline["status"] == "done" and baseline["report"]["added"] == BASE_FILES + NEW_FILES, baseline
    by_source = {d["source"]: d["doc_id"] for d in baseline["documents"]}
    base_ids = [by_source[f"doc{i:02d}.slow"] for i in range(BASE_FILES)]
    assert check_state(ws, base_ids, {0}) == (0, {0})

    rng = random.Random(14)
    plans: list[tuple[str, float]] = [("", rng.uniform(0.0, duration)) for _ in range(4)]
    plans += [(point, 0.0) for point in CRASH_POINTS]
    rng.shuffle(plans)
    current, landed_versions = 0, {0}
    outcomes = []
    for version, (point, delay) in enumerate(plans, start=1):
        if point:
            ws.crash_file.write_text(point)
        job_id = ws.upload(version)
        if point:
            ws.wait_for_crash()
            ws.crash_file.unlink()
        else:
            time.sleep(delay)
            ws.kill()
        ws.start()  # on the crashed index; also the next plan's victim
        base, new = check_state(ws, base_ids, {current, version})
        landed = base == version
        assert new == landed_versions | ({version} if landed else set())  # base and new files went together
        job = ws.job(job_id)
        if job["status"] == "done":
            assert landed
        else:
            assert job["status"] == "failed" and job["error"] == INTERRUPTED, job
        if point in AFTER_COMMIT:
            assert landed, point  # killed after the job's commit: the upload is there
        if point == "txn-put:9":
            assert not landed  # killed inside the job's transaction: nothing of it
        if landed:
            current = version
            landed_versions.add(version)
        outcomes.append((point or f"after {delay:.2f}s", job["status"], landed))

    # the last restarted server takes a whole upload, and its writer brings every saved state up to date
    final = len(plans) + 1
    done = ws.wait_job(ws.upload(final))
    assert done["status"] == "done", done
    assert check_state(ws, base_ids, {final}) == (final, landed_versions | {final})
    ws.kill()
    with Index.open(ws.index_dir) as index:
        assert_index_consistent(index)
    assert {landed for *_, landed in outcomes} == {True, False}, outcomes
