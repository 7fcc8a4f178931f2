"""``manifest.json``: what an index is (format version, embedder, chunking, vector backend), read before anything else."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragkit.errors import IndexFormatError

FORMAT = "ragkit-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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
            raise IndexFormatError(f"{path}: no manifest; is {directory} a ragkit index? (create one with `ragkit index`)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise IndexFormatError(f"{path}: manifest is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IndexFormatError(f"{path}: not a ragkit manifest (format field is {data.get('format')!r})")
        if data.get("version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{path}: index format version {data.get('version')!r}; this ragkit reads version {FORMAT_VERSION}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise IndexFormatError(f"{path}: manifest has unexpected fields ({exc})") from None
