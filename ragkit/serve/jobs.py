"""Upload jobs of ``ragkit serve``: documents indexed on one writer thread while the server answers queries.

Every upload (``POST /v1/documents``) becomes a :class:`Job`. Small ones are awaited by the request; large ones
answer 202 at once and are followed with ``GET /v1/jobs/{id}``. Why it is built this way:

- **One writer thread.** An index has one writer at a time (``IndexStore.writer()`` holds ``index.lock``), so
  jobs, and the deletes of ``DELETE /v1/documents/{id}``, run one after another on the manager's thread;
  queries go on being answered by the readers, which follow the catalog's generation.
- **All of a job or none of it.** A job's documents go through ``Index.add_documents(..., atomic=True)``: they
  are embedded batch by batch, then committed in one catalog transaction. A SIGKILL at any point leaves the
  index with the whole upload or without it, and the index opens (derived states that lag behind the catalog
  are caught up by readers in memory, by the next writer on disk).
- **Records that survive a restart.** Each job is a small JSON file under ``data_dir/jobs/``, written
  atomically (temporary file, fsync, ``os.replace``) when its status changes. A server that starts and finds a
  job still queued or running reports it as failed (interrupted), and removes its staged files.
- **Nothing of the server's layout reaches the client.** Uploaded files are staged under
  ``data_dir/uploads/<tenant>/<job id>/`` with sanitized names (:func:`safe_file_name`) and removed once the job
  ends (the catalog holds their text). Their documents get the upload's name as ``source`` and an id made from
  it, so uploading a file again under the same name updates its document.
- **Tenants stay apart.** A tenant's documents are tagged ``tenant=<T>`` and their ids are prefixed with
  ``<T>:`` (percent-encoded, so the prefix is unambiguous): two tenants that upload ``doc-1`` get two documents.

>>> jobs = JobManager(index, Path("serve-data"))                    # doctest: +SKIP
>>> job = jobs.create("acme", "documents")                          # doctest: +SKIP
>>> jobs.submit_documents(job, [Document("acme:a", "text", "a")]).result().status   # doctest: +SKIP
'done'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from ragkit.index import Index
from ragkit.types import Document, LoadError, sha1_hex

logger = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "done", "failed"]
JobKind = Literal["files", "documents"]
FINISHED: frozenset[str] = frozenset({"done", "failed"})
TENANT_TAG = "tenant"  # as ragkit.serve.auth.TENANT_TAG; kept here so jobs need no FastAPI-side import

JOBS_DIR = "jobs"
UPLOADS_DIR = "uploads"
MAX_NAME_BYTES = 120  # a staged file name, in UTF-8 bytes (file systems allow 255)
CANCEL_WAIT_S = 5.0  # how long close() waits for a cancelled job to reach its next file or batch
MAX_LISTED_DOCUMENTS = 1000  # documents a job's record lists (a CSV upload can hold many more rows)
JOB_ID = re.compile(r"[0-9a-f]{32}")
INTERRUPTED = (
    "interrupted: the server stopped before the job finished; the upload was indexed wholly or not at all "
    "(list the documents to see which), send it again to be sure"
)

T = TypeVar("T")


class JobCancelled(RuntimeError):
    """Raised inside a running job when the server shuts down: the job's one transaction never happens."""


class ServerClosing(RuntimeError):
    """The job manager is closed: no more writes are accepted (the app answers 503)."""


@dataclass
class StagedFile:
    """An uploaded file as stored for a job: its sanitized name (what the client sees) and its path."""

    name: str
    path: Path


@dataclass
class Job:
    """One upload and what became of it; ``public()`` is what ``GET /v1/jobs/{id}`` shows."""

    id: str
    tenant: str | None
    kind: JobKind
    status: JobStatus = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    files_total: int = 0
    files_done: int = 0
    documents_total: int = 0  # known up front for JSON documents; grows as files load
    documents_loaded: int = 0
    chunks_done: int = 0  # embedded (and extracted); they all commit together at the end
    chunks_total: int = 0
    report: dict[str, int] = field(default_factory=dict)
    documents: list[dict[str, Any]] = field(default_factory=list)
    documents_truncated: bool = False
    errors: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None

    def public(self) -> dict[str, Any]:
        """The job as the client sees it (no tenant: the caller knows its own)."""
        progress: dict[str, Any] = {
            "documents": {"done": self.documents_loaded, "total": self.documents_total or None},
            "chunks": {"done": self.chunks_done, "total": self.chunks_total},
        }
        if self.kind == "files":
            progress["files"] = {"done": self.files_done, "total": self.files_total}
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "kind": self.kind,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": progress,
            "report": self.report,
            "documents": self.documents,
            "errors": self.errors,
        }
        if self.documents_truncated:
            body["documents_truncated"] = True
        if self.error is not None:
            body["error"] = self.error
        return body


# -- names ----------------------------------------------------------------------------------------------------


def tenant_prefix(tenant: str | None) -> str:
    """What a tenant's document ids start with: ``acme:``; percent-encoding makes the first ``:`` the end of
    the prefix whatever the tenant's name holds. The keyless server (tenant None) uses ids as given."""
    return "" if tenant is None else quote(tenant, safe="") + ":"


def stored_id(tenant: str | None, given: str) -> str:
    """The catalog id of a document the client calls ``given``."""
    return tenant_prefix(tenant) + given


def shown_id(tenant: str | None, doc_id: str) -> str:
    """The id the client uses for a catalog id: without its own tenant's prefix."""
    prefix = tenant_prefix(tenant)
    return doc_id[len(prefix) :] if prefix and doc_id.startswith(prefix) else doc_id


_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def safe_file_name(name: str | None, fallback: str) -> str:
    """A name to store an upload under: the base name only, without path separators, NUL, control, format
    (bidirectional overrides, zero-width) or line-separator characters, leading dots or surrounding spaces, at most
    ``MAX_NAME_BYTES`` bytes of UTF-8 (the suffix kept); ``fallback`` when nothing usable is left.

    >>> safe_file_name("../../etc/passwd", "file-1"), safe_file_name("..", "file-2")
    ('passwd', 'file-2')
    """
    text = unicodedata.normalize("NFC", name or "")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]  # a Windows path too
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))
    text = _UNSAFE_CHARACTERS.sub("", text).strip().lstrip(".").strip()
    if not text or set(text) <= {"."}:
        return fallback
    if len(text.encode("utf-8")) > MAX_NAME_BYTES:
        stem, dot, suffix = text.rpartition(".")
        suffix = dot + suffix if dot and stem and len(suffix) <= 16 else ""
        stem = text[: len(text) - len(suffix)]
        budget = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
        stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(". ")
        text = (stem or fallback) + suffix
    return text


def _tenant_folder(tenant: str | None) -> str:
    """A folder name for a tenant's uploads: readable, and unique through a hash of the exact name."""
    if tenant is None:
        return "_local"
    readable = safe_file_name(tenant, "tenant")[:40]
    return f"{readable}-{sha1_hex(tenant)[:10]}"


def _upload_doc_id(name: str) -> str:
    """The id of an uploaded file's document, from its name (as a loader makes one from a path)."""
    return sha1_hex(f"upload:{name}")[:16]


# -- the manager ----------------------------------------------------------------------------------------------


class JobManager:
    """Runs upload jobs and document deletes on one writer thread, and keeps a JSON record of every job.

    ``sync_max_bytes`` / ``sync_max_items``: uploads at most this large are indexed before the reply (201);
    larger ones answer 202 with the job. ``retention_s``: finished job records older than this are dropped.
    """

    def __init__(
        self,
        index: Index,
        data_dir: Path,
        *,
        sync_max_bytes: int = 2**20,
        sync_max_items: int = 20,
        retention_s: float = 7 * 86400,
    ) -> None:
        self.index = index
        self.data_dir = Path(data_dir)
        self.sync_max_bytes = sync_max_bytes
        self.sync_max_items = sync_max_items
        self.retention_s = retention_s
        self.jobs_dir = self.data_dir / JOBS_DIR
        self.uploads_dir = self.data_dir / UPLOADS_DIR
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._closing = threading.Event()  # no new writes
        self._cancel = threading.Event()  # the running job stops at its next file or batch
        self._futures: set[Future[Any]] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragkit-writer")
        self._recover()

    # -- records ----------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Load the records a previous server left; a job it did not finish is failed (it was interrupted)."""
        now = time.time()
        for path in sorted(self.jobs_dir.glob("*.json")):
            try:
                job = Job(**json.loads(path.read_text(encoding="utf-8")))
                if not JOB_ID.fullmatch(job.id) or path.stem != job.id:
                    raise ValueError(f"job id {job.id!r} does not match the file name")
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("ignoring unreadable job record %s (%s)", path, exc)
                continue
            if job.status not in FINISHED:
                job.status, job.error, job.finished_at = "failed", INTERRUPTED, now
                self._save(job)
            elif job.finished_at is not None and now - job.finished_at > self.retention_s:
                path.unlink(missing_ok=True)
                continue
            self._jobs[job.id] = job
        for partial in self.jobs_dir.glob(".*.tmp"):  # a record being written when the server died
            partial.unlink(missing_ok=True)
        # staged files of jobs that are over (interrupted ones included): their text is in the catalog or nowhere
        for tenant_dir in self.uploads_dir.iterdir():
            for job_dir in tenant_dir.iterdir() if tenant_dir.is_dir() else ():
                shutil.rmtree(job_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                tenant_dir.rmdir()

    def _save(self, job: Job) -> None:
        """Write the job's record atomically: a reader (or a restarted server) sees the old one or the new."""
        path = self.jobs_dir / f"{job.id}.json"
        tmp = path.with_name(f".{job.id}.{uuid.uuid4().hex}.tmp")
        with self._lock:
            text = json.dumps(asdict(job), ensure_ascii=False)
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def create(self, tenant: str | None, kind: JobKind) -> Job:
        """A new queued job, recorded on disk before anything of it is stored."""
        if self._closing.is_set():
            raise ServerClosing("the server is shutting down; send the upload again later")
        job = Job(id=uuid.uuid4().hex, tenant=tenant, kind=kind)
        with self._lock:
            self._jobs[job.id] = job
        self._save(job)
        return job

    def get(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        """The job as ``GET /v1/jobs/{id}`` shows it; None when unknown or another tenant's (the same answer)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or (tenant is not None and job.tenant != tenant):
                return None
            return job.public()

    def public(self, job: Job) -> dict[str, Any]:
        with self._lock:
            return job.public()

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called (writes are refused from then on)."""
        return self._closing.is_set()

    def fail(self, job: Job, error: str) -> None:
        """End a job that could not be submitted (its files could not be stored)."""
        self._finish(job, "failed", error=error)

    def is_small(self, size: int, items: int) -> bool:
        """Whether an upload of ``size`` bytes and ``items`` files or documents is indexed before the reply."""
        return size <= self.sync_max_bytes and items <= self.sync_max_items

    def upload_dir(self, job: Job) -> Path:
        """The folder a job's files are staged in: ``uploads/<tenant>/<job id>/`` (created)."""
        folder = self.uploads_dir / _tenant_folder(job.tenant) / job.id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def stage_file(self, job: Job, name: str | None, content: Any, taken: set[str]) -> StagedFile:
        """Copy one uploaded file (a binary file object) into the job's folder under a safe, unused name."""
        folder = self.upload_dir(job)
        base = safe_file_name(name, f"file-{len(taken) + 1}")
        candidate, number = base, 1
        while candidate in taken:
            number += 1
            stem, dot, suffix = base.rpartition(".")
            candidate = f"{stem}-{number}.{suffix}" if dot and stem else f"{base}-{number}"
        taken.add(candidate)
        path = folder / candidate
        if path.resolve().parent != folder.resolve():  # defence in depth: safe_file_name allows no separators
            raise ValueError(f"file name {name!r} leads outside the upload folder")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
            shutil.copyfileobj(content, out, 1 << 20)
        return StagedFile(candidate, path)

    # -- running ----------------------------------------------------------------------------------------

    def submit_files(self, job: Job, files: Sequence[StagedFile]) -> Future[Job]:
        """Index the staged files on the writer thread; the future gives the finished job."""
        with self._lock:
            job.files_total = len(files)
        return self._run_job(job, lambda: self._file_documents(job, files))

    def submit_documents(self, job: Job, documents: Sequence[Document]) -> Future[Job]:
        """Index documents (ids already tenant-scoped) on the writer thread; the future gives the finished job."""
        with self._lock:
            job.documents_total = len(documents)
        return self._run_job(job, lambda: iter(documents))

    def write(self, action: Callable[[], T]) -> Future[T]:
        """Run ``action`` on the writer thread, after the jobs before it (deletes go this way)."""
        return self._submit(action)

    def _submit(self, action: Callable[[], T]) -> Future[T]:
        with self._lock:
            if self._closing.is_set():
                raise ServerClosing("the server is shutting down; try again later")
            future = self._executor.submit(action)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _run_job(self, job: Job, documents: Callable[[], Iterator[Document]]) -> Future[Job]:
        try:
            return self._submit(lambda: self._run(job, documents))
        except ServerClosing:
            self._finish(job, "failed", error="the server is shutting down; send the upload again later")
            raise

    def _run(self, job: Job, documents: Callable[[], Iterator[Document]]) -> Job:
        if self._closing.is_set():
            self._finish(job, "failed", error="cancelled: the server shut down before the job started")
            return job
        with self._lock:
            job.status, job.started_at = "running", time.time()
        self._save(job)
        yielded: list[str] = []
        try:
            tags = {TENANT_TAG: job.tenant} if job.tenant is not None else {}
            report = self.index.add_documents(
                self._watched(job, documents(), yielded), meta=tags, atomic=True, progress=self._progress(job)
            )
        except JobCancelled:
            self._finish(job, "failed", error="cancelled: the server shut down; nothing of the upload was indexed")
            return job
        except Exception as exc:  # noqa: BLE001 - the job fails, the server stays up
            logger.exception("upload job %s failed", job.id)
            reason = self._scrub(job, f"{type(exc).__name__}: {exc}")
            self._finish(job, "failed", error=f"indexing failed, nothing of the upload was indexed ({reason})")
            return job
        errors = [
            {"source": self._scrub(job, e.source), "reason": self._scrub(job, e.reason), "stage": e.stage}
            for e in report.errors
        ]
        counts = report.as_dict()
        summary = {key: counts[key] for key in ("added", "updated", "unchanged", "failed", "chunks")}
        with self._lock:
            job.errors += errors
            job.report = summary
        self._finish(job, "done", listed=yielded)
        return job

    def _finish(self, job: Job, status: JobStatus, *, error: str | None = None, listed: Sequence[str] = ()) -> None:
        documents: list[dict[str, Any]] = []
        if listed:
            unique = list(dict.fromkeys(listed))
            chosen = unique[:MAX_LISTED_DOCUMENTS]
            found = {d.id: d for d in self.index.catalog.list_documents(ids=chosen, limit=len(chosen))}
            documents = [
                {
                    "id": shown_id(job.tenant, doc_id),
                    "doc_id": doc_id,
                    "source": found[doc_id].source,
                    "title": found[doc_id].title,
                    "chunks": found[doc_id].chunks,
                }
                for doc_id in chosen
                if doc_id in found
            ]
        with self._lock:
            job.status, job.finished_at, job.error = status, time.time(), error
            job.documents = documents
            job.documents_truncated = len(set(listed)) > MAX_LISTED_DOCUMENTS
        self._save(job)
        if job.kind == "files":
            shutil.rmtree(self.uploads_dir / _tenant_folder(job.tenant) / job.id, ignore_errors=True)
        self._prune()

    def _prune(self) -> None:
        cutoff = time.time() - self.retention_s
        with self._lock:
            old = [j.id for j in self._jobs.values() if j.finished_at is not None and j.finished_at < cutoff]
            for job_id in old:
                del self._jobs[job_id]
        for job_id in old:
            (self.jobs_dir / f"{job_id}.json").unlink(missing_ok=True)

    def _progress(self, job: Job) -> Callable[[str, int, int], None]:
        def progress(stage: str, done: int, total: int) -> None:
            if self._cancel.is_set():
                raise JobCancelled(job.id)  # before the job's one transaction: nothing of it lands
            with self._lock:
                if stage == "load":
                    job.documents_loaded = done
                    job.documents_total = max(job.documents_total, done)
                elif stage == "embed":
                    job.chunks_done, job.chunks_total = done, total

        return progress

    def _watched(self, job: Job, documents: Iterator[Document], yielded: list[str]) -> Iterator[Document]:
        """``documents`` as the pipeline pulls them, remembered for the job's record; stops when closing."""
        for doc in documents:
            if self._cancel.is_set():
                raise JobCancelled(job.id)
            yielded.append(doc.id)
            yield doc

    def _file_documents(self, job: Job, files: Sequence[StagedFile]) -> Iterator[Document]:
        """The documents of the staged files, loaded by the registered loaders: sources become the upload
        names and ids are made from them (tenant-scoped); a file that does not load is one error of the job."""
        from ragkit.connectors.loaders import load_sources
        from ragkit.connectors.loaders.common import file_doc_id, file_source

        fields = self.index.settings.loaders.row_fields()
        for staged in files:
            real_source = file_source(staged.path)
            real_id, new_id = file_doc_id(real_source), _upload_doc_id(staged.name)
            for item in load_sources([staged.path], fields=fields):
                if isinstance(item, LoadError):
                    where = item.source.replace(real_source, staged.name)
                    error = {"source": where, "reason": self._scrub(job, item.reason), "stage": item.stage}
                    with self._lock:
                        job.errors.append(error)
                    continue
                doc_id = new_id + item.id[len(real_id) :] if item.id.startswith(real_id) else item.id
                yield replace(item, id=stored_id(job.tenant, doc_id), source=staged.name)
            with self._lock:
                job.files_done += 1

    def _scrub(self, job: Job, text: str) -> str:
        """``text`` without the server's folders (a loader's reason may name the staged path)."""
        for folder in (self.uploads_dir / _tenant_folder(job.tenant) / job.id, self.data_dir):
            for form in {str(folder.resolve()), str(folder)}:
                text = text.replace(form + os.sep, "").replace(form, "")
        return text

    # -- shutting down ----------------------------------------------------------------------------------

    def close(self, timeout_s: float) -> None:
        """Stop taking writes and give the jobs in flight ``timeout_s`` seconds to finish; then a running job
        stops at its next file or batch (it commits nothing: a cancelled job leaves no trace in the index) and
        queued ones are failed. Waits at most ``CANCEL_WAIT_S`` more for the cancelled job to stop."""
        with self._lock:
            self._closing.set()
            pending = list(self._futures)
        deadline = time.monotonic() + max(timeout_s, 0.0)
        for future in pending:
            with contextlib.suppress(Exception):
                future.result(timeout=max(deadline - time.monotonic(), 0.0))
        self._cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + CANCEL_WAIT_S
        for future in pending:
            with contextlib.suppress(Exception):
                future.result(timeout=max(deadline - time.monotonic(), 0.0))
        with self._lock:
            queued = [job for job in self._jobs.values() if job.status == "queued"]
        for job in queued:
            self._finish(job, "failed", error="cancelled: the server shut down before the job started")

    def jobs(self, tenant: str | None) -> Iterable[dict[str, Any]]:
        """Every known job of ``tenant`` (all of them for None), newest first."""
        with self._lock:
            chosen = [j for j in self._jobs.values() if tenant is None or j.tenant == tenant]
            return [j.public() for j in sorted(chosen, key=lambda j: j.created_at, reverse=True)]
