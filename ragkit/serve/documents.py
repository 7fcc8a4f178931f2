"""``/v1/documents`` and ``/v1/jobs``: a tenant's documents uploaded, listed and deleted while the server answers.

- ``POST /v1/documents``: multipart files (field ``files``, several allowed) or JSON
  ``{"documents": [{"id", "text", "title"?, "metadata"?}]}``. Small uploads are indexed before the reply (201);
  larger ones answer 202 with a job to follow at ``GET /v1/jobs/{id}``. See ``ragkit.serve.jobs`` for how
  files are staged, how a job lands in one commit, and how tenants' ids are kept apart.
- ``GET /v1/documents``: the caller tenant's documents, paged (``limit`` with ``offset`` or ``cursor``).
- ``DELETE /v1/documents/{id}``: one of the caller tenant's documents, by id only; another tenant's id gets the
  same 404 as an unknown one.

Errors are ``HTTPException(status, detail=message)``; the app turns them into its JSON error body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from ragkit.index import Index
from ragkit.serve.auth import TENANT_TAG, Principal
from ragkit.serve.jobs import JOB_ID, Job, JobManager, ServerClosing, StagedFile, shown_id, stored_id
from ragkit.types import Document

FILES_FIELD = "files"
MAX_FILES = 1000  # files in one multipart request
MAX_DOCUMENTS = 10_000  # documents in one JSON request
MAX_ID_CHARS = 512
MAX_PAGE = 1000


class DocumentIn(BaseModel):
    """One document of a JSON upload; ``metadata`` is stored with it and listed back (it may not name a tenant)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    text: str
    title: str = Field("", max_length=2000)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsIn(BaseModel):
    """The JSON body of ``POST /v1/documents``."""

    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1, max_length=MAX_DOCUMENTS)


def documents_router(*, index: Index, jobs: JobManager, authorize: Callable[[str], Any]) -> APIRouter:
    """The routes of this module, over ``index``; writes go through ``jobs``' writer thread.

    ``authorize("read")`` / ``authorize("write")`` are FastAPI dependencies giving the caller's ``Principal``.
    """
    router = APIRouter(tags=["documents"])
    # FastAPI reads the caller from these defaults (made once here; a call in each signature is the same thing)
    reader, writer = Depends(authorize("read")), Depends(authorize("write"))

    @router.post("/v1/documents", status_code=201)
    async def upload_documents(request: Request, principal: Principal = writer) -> JSONResponse:
        """Upload documents for the caller's tenant: multipart ``files`` or JSON ``{"documents": [...]}``.

        Every document is tagged with the caller's tenant. Files are loaded by the loaders of their suffix
        (text, Markdown, HTML, PDF, JSONL, CSV); a file that does not load is reported in ``errors`` and the
        others are indexed. An upload of at most 1 MiB and 20 files or documents is indexed before the reply:
        201 with ``documents`` (``id`` as you gave it or as the file's, ``doc_id`` as retrieval hits name it,
        ``source``, ``chunks``) and ``errors``; a larger one answers 202 with ``{"job": {...}}``
        (``GET /v1/jobs/{id}`` follows it). Either way a job's documents land together or not at all.

        curl -F files=@handbook.pdf -F files=@faq.md -H "Authorization: Bearer $KEY" $URL/v1/documents
        """
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media == "multipart/form-data":
            job, future = await _submit_files(request, principal)
        elif media in ("application/json", "") or media.endswith("+json"):
            job, future = await _submit_json(request, principal)
        else:
            raise HTTPException(
                415,
                detail=f"unsupported content type {media!r}: send multipart/form-data with the files in the "
                f"'{FILES_FIELD}' field, or application/json with {{\"documents\": [...]}}",
            )
        if future is None:
            return JSONResponse({"job": jobs.public(job)}, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})
        # shielded: a client that hangs up does not cancel the job (it is recorded, and finishes)
        done = await asyncio.shield(asyncio.wrap_future(future))
        body = jobs.public(done)
        if done.status != "done":
            raise HTTPException(503 if jobs.closing else 500, detail=done.error or "the upload failed")
        return JSONResponse({"job": body, "documents": body["documents"], "errors": body["errors"]}, status_code=201)

    async def _submit_files(request: Request, principal: Principal) -> tuple[Job, Any]:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
        try:
            unknown = sorted(set(form.keys()) - {FILES_FIELD})
            if unknown:
                raise HTTPException(400, detail=f"unknown form field(s) {unknown}: put the files in '{FILES_FIELD}'")
            uploads = form.getlist(FILES_FIELD)
            if not uploads:
                raise HTTPException(400, detail=f"no files: send them in the multipart field '{FILES_FIELD}'")
            if not all(isinstance(upload, UploadFile) for upload in uploads):
                raise HTTPException(400, detail=f"'{FILES_FIELD}' must hold files (parts with a filename)")
            files = [u for u in uploads if isinstance(u, UploadFile)]
            size = sum(u.size or 0 for u in files)
            job = _create(principal, "files")
            try:
                staged = await run_in_threadpool(_stage, job, files)
            except OSError as exc:
                jobs.fail(job, f"could not store the upload ({exc.strerror or exc})")
                raise HTTPException(507, detail="the server could not store the upload; try again later") from None
            return job, _submit(jobs.submit_files, job, staged, jobs.is_small(size, len(files)))
        finally:
            await form.close()

    def _stage(job: Job, files: Sequence[UploadFile]) -> list[StagedFile]:
        taken: set[str] = set()
        return [jobs.stage_file(job, upload.filename, upload.file, taken) for upload in files]

    async def _submit_json(request: Request, principal: Principal) -> tuple[Job, Any]:
        body = await request.body()
        try:
            data = json.loads(body)
        except UnicodeDecodeError as exc:
            detail = f"request body is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            raise HTTPException(400, detail=detail) from None
        except ValueError as exc:
            raise HTTPException(400, detail=f"request body is not valid JSON ({exc})") from None
        try:
            request_body = DocumentsIn.model_validate(data)
        except ValidationError as exc:
            raise HTTPException(422, detail=_validation_message(exc)) from None
        documents = []
        for number, item in enumerate(request_body.documents):
            if TENANT_TAG in item.metadata:
                raise HTTPException(
                    400,
                    detail=f"documents[{number}].metadata: '{TENANT_TAG}' cannot be set; documents take the "
                    "tenant of the API key",
                )
            doc_id = stored_id(principal.tenant, item.id)
            documents.append(Document(id=doc_id, text=item.text, source=item.id, title=item.title, meta=item.metadata))
        job = _create(principal, "documents")
        return job, _submit(jobs.submit_documents, job, documents, jobs.is_small(len(body), len(documents)))

    def _create(principal: Principal, kind: Any) -> Job:
        try:
            return jobs.create(principal.tenant, kind)
        except ServerClosing as exc:
            raise HTTPException(503, detail=str(exc)) from None

    def _submit(submit: Callable[..., Any], job: Job, items: Any, small: bool) -> Any:
        try:
            future = submit(job, items)
        except ServerClosing as exc:
            raise HTTPException(503, detail=str(exc)) from None
        return future if small else None

    @router.get("/v1/documents")
    def list_documents(
        limit: int = Query(100, ge=1, le=MAX_PAGE, description="documents per page"),
        offset: int = Query(0, ge=0, le=2**31, description="documents to skip (after the cursor, if any)"),
        cursor: str | None = Query(None, max_length=4 * MAX_ID_CHARS, description="next_cursor of the last page"),
        principal: Principal = reader,
    ) -> dict[str, Any]:
        """The caller tenant's documents in id order, without their text; ``total`` and ``chunks`` count only
        that tenant's. Page with ``limit`` and ``offset``, or pass the previous page's ``next_cursor`` (stable
        while documents are added and deleted).

        curl -H "Authorization: Bearer $KEY" "$URL/v1/documents?limit=50&cursor=$NEXT"
        """
        tags = {TENANT_TAG: principal.tenant} if principal.tenant is not None else None
        after = _decode_cursor(cursor) if cursor is not None else None
        page = index.catalog.list_documents(tags=tags, after=after, offset=offset, limit=limit)
        counts = index.catalog.count_documents(tags)
        return {
            "documents": [
                {
                    "id": shown_id(principal.tenant, d.id),
                    "doc_id": d.id,
                    "source": d.source,
                    "title": d.title,
                    "chunks": d.chunks,
                    "metadata": d.meta,
                    "tags": d.tags,
                    "indexed_at": d.indexed_at,
                }
                for d in page
            ],
            "total": counts["documents"],
            "chunks": counts["chunks"],
            "limit": limit,
            "offset": offset,
            "next_cursor": _encode_cursor(page[-1].id) if len(page) == limit else None,
        }

    @router.delete("/v1/documents/{doc_id:path}")
    async def delete_document(doc_id: str, principal: Principal = writer) -> dict[str, Any]:
        """Delete one of the caller tenant's documents, with its chunks, vectors and graph facts, by its id (as
        listed, or as retrieval hits name it). An unknown id and another tenant's id get the same 404.

        curl -X DELETE -H "Authorization: Bearer $KEY" $URL/v1/documents/handbook-2024
        """
        not_found = HTTPException(404, detail=f"document {doc_id!r} not found")
        if len(doc_id) > 4 * MAX_ID_CHARS or any("\ud800" <= ch <= "\udfff" for ch in doc_id):
            raise not_found
        tags = {TENANT_TAG: principal.tenant} if principal.tenant is not None else None
        candidates = list(dict.fromkeys([stored_id(principal.tenant, doc_id), doc_id]))

        def delete() -> dict[str, Any] | None:
            # on the writer thread: no write of this server comes between the check and the delete
            for candidate in candidates:
                found = index.catalog.list_documents(ids=[candidate], tags=tags, limit=1)
                if found:
                    removed = index.delete(candidate)  # an id the catalog holds: deleted as an id, never a path
                    return {"id": shown_id(principal.tenant, candidate), "doc_id": candidate, "removed": removed}
            return None

        try:
            result = await asyncio.shield(asyncio.wrap_future(jobs.write(delete)))
        except ServerClosing as exc:
            raise HTTPException(503, detail=str(exc)) from None
        if result is None:
            raise not_found
        return {"deleted": {"id": result["id"], "doc_id": result["doc_id"]}}

    @router.get("/v1/jobs/{job_id}")
    def get_job(job_id: str, principal: Principal = writer) -> dict[str, Any]:
        """An upload job: ``status`` (queued, running, done, failed), ``progress`` (files, documents and chunks
        done of total), ``report``, ``documents``, per-file ``errors`` and, when it failed, ``error``. Another
        tenant's job is 404, as an unknown one.

        curl -H "Authorization: Bearer $KEY" $URL/v1/jobs/$JOB
        """
        job = jobs.get(job_id, principal.tenant) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPException(404, detail=f"job {job_id!r} not found")
        return {"job": job}

    return router


def _validation_message(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``documents.0.id: Field required; ...`` (the first five)."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _encode_cursor(doc_id: str) -> str:
    return base64.urlsafe_b64encode(doc_id.encode("utf-8")).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise HTTPException(400, detail="cursor: not a next_cursor this server gave") from None
