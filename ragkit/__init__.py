"""ragkit: RAG and Graph-RAG over your own documents, with measured retrieval quality.

>>> import ragkit
>>> index = ragkit.Index.create("my-index")
>>> index.add(["docs/"])
>>> index.ask("What does ragkit store on disk?").text

Names are imported on first use, so ``import ragkit`` (and the CLI's start) stays fast and a part such as the
embedder can be used on a machine without FAISS or BM25 installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Answer": "ragkit.types",
    "Chunk": "ragkit.types",
    "ConfigError": "ragkit.errors",
    "DimensionMismatchError": "ragkit.errors",
    "Document": "ragkit.types",
    "EmbedderMismatchError": "ragkit.errors",
    "GeneratorError": "ragkit.errors",
    "Hit": "ragkit.types",
    "Index": "ragkit.index",
    "IndexFormatError": "ragkit.errors",
    "LoadError": "ragkit.types",
    "RagkitError": "ragkit.errors",
    "Settings": "ragkit.config",
    "load_settings": "ragkit.config",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ragkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from ragkit.config import Settings, load_settings  # noqa: F401
    from ragkit.errors import (
        ConfigError,  # noqa: F401
        DimensionMismatchError,  # noqa: F401
        EmbedderMismatchError,  # noqa: F401
        GeneratorError,  # noqa: F401
        IndexFormatError,  # noqa: F401
        RagkitError,  # noqa: F401
    )
    from ragkit.index import Index  # noqa: F401
    from ragkit.types import Answer, Chunk, Document, Hit, LoadError  # noqa: F401
