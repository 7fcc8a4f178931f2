"""ragkit: RAG and Graph-RAG over your own documents, with measured retrieval quality.

>>> import ragkit
>>> index = ragkit.Index.create("my-index")
>>> index.add(["docs/"])
>>> index.ask("What does ragkit store on disk?").text
"""

from ragkit.config import Settings, load_settings
from ragkit.errors import (
    ConfigError,
    DimensionMismatchError,
    EmbedderMismatchError,
    GeneratorError,
    IndexFormatError,
    RagkitError,
)
from ragkit.index import Index
from ragkit.types import Answer, Chunk, Document, Hit, LoadError

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "Chunk",
    "ConfigError",
    "DimensionMismatchError",
    "Document",
    "EmbedderMismatchError",
    "GeneratorError",
    "Hit",
    "Index",
    "IndexFormatError",
    "LoadError",
    "RagkitError",
    "Settings",
    "__version__",
    "load_settings",
]
