"""``manifest.json``: what an index is (format version, embedder, chunking, vector backend), read before anything
else."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragkit.errors import IndexFormatError
from ragkit.registry import vector_backends

FORMAT = "ragkit-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXTERNAL_BACKEND = "external"  # vectors kept in the caller's own VectorIndex instance (Index.create(vectors=...))


@dataclass(frozen=True)
class Manifest:
    embedder: str
    dimension: int
    max_tokens: int
    chunking: dict[str, Any]
    vectors: dict[str, Any]
    graph: bool = True
    format: str = FORMAT
    version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        path = directory / MANIFEST
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.exists():
            raise IndexFormatError(
                f"{path}: no manifest; is {directory} a ragkit index? (create one with `ragkit index`)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise IndexFormatError(f"{path}: manifest is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise IndexFormatError(f"{path}: not a ragkit manifest (a JSON {kind}, not an object)")
        if data.get("format") != FORMAT:
            raise IndexFormatError(f"{path}: not a ragkit manifest (format field is {data.get('format')!r})")
        if data.get("version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{path}: index format version {data.get('version')!r}; this ragkit reads version {FORMAT_VERSION}"
            )
        try:
            manifest = cls(**data)
        except TypeError as exc:
            raise IndexFormatError(f"{path}: manifest has unexpected fields ({exc})") from None
        problem = manifest._problem()
        if problem:
            raise IndexFormatError(f"{path}: manifest field {problem}")
        return manifest

    def _problem(self) -> str | None:
        """What is wrong with a loaded manifest's values (a tampered or hand-edited file), or None."""

        def positive(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        checks = (
            ("embedder", isinstance(self.embedder, str) and bool(self.embedder), "a model name"),
            ("dimension", positive(self.dimension), "a positive integer"),
            ("max_tokens", positive(self.max_tokens), "a positive integer"),
            ("chunking", isinstance(self.chunking, dict), "an object"),
            ("vectors", isinstance(self.vectors, dict), "an object"),
            ("graph", isinstance(self.graph, bool), "true or false"),
            ("extra", isinstance(self.extra, dict), "an object"),
        )
        for name, ok, expected in checks:
            if not ok:
                return f"{name!r} must be {expected} (got {getattr(self, name)!r})"
        vectors = self.vectors
        backend = vectors.get("backend", "faiss")
        if backend not in vector_backends and backend != EXTERNAL_BACKEND:
            installed = ", ".join(vector_backends.names())
            return (
                f"'vectors.backend' must be an installed vector backend: {installed} (got {backend!r}; a plugin's "
                "backend needs its package installed)"
            )
        if not positive(vectors.get("shards", 1)):
            return f"'vectors.shards' must be a positive integer (got {vectors.get('shards')!r})"
        for key in ("kind", "uri", "token"):
            if vectors.get(key) is not None and not isinstance(vectors[key], str):
                return f"'vectors.{key}' must be a string (got {vectors[key]!r})"
        return None
