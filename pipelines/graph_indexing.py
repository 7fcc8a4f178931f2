"""Knowledge-graph extraction as a stage of the index pipeline.

Extraction runs before a batch's catalog transaction (spaCy is slow; the transaction stays short), and the
graph facts of the batch's documents are replaced inside the same transaction as their chunks, so the graph
always matches the catalog.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from ragkit.config import Settings
from ragkit.graph.extract import SpacyExtractor
from ragkit.graph.model import ChunkExtraction
from ragkit.graph.settings import GraphSettings
from ragkit.types import Chunk

if TYPE_CHECKING:
    from ragkit.store import IndexWriter


def graph_settings(settings: Settings) -> GraphSettings:
    """The ``[graph] options`` of ragkit.toml, validated."""
    return GraphSettings.from_options(settings.graph.options, origin="ragkit.toml [graph] options")


class GraphWriter:
    """Extracts entities and relations from chunks and writes them to the index's graph store."""

    def __init__(self, writer: IndexWriter, expected_chunks: int = 0) -> None:
        self.store = writer.graph_store()
        self.extractor = SpacyExtractor(graph_settings(writer.store.settings))
        self._started: dict[tuple[str, ...], Iterator[ChunkExtraction]] = {}
        if self.extractor.uses_processes(expected_chunks):
            self.extractor.start()  # the workers load spaCy while the first batch is embedded

    def start(self, chunks: Sequence[Chunk]) -> bool:
        """Hands ``chunks`` to the worker processes now, if there are any, and says whether it did; ``extract``
        of the same chunks then collects what they found. The index pipeline starts a batch before it embeds the
        batch and writes the one before, so the workers extract while this process does the rest."""
        try:
            started = self.extractor.extract(chunks)
        except Exception:  # extract() runs it again, inside the pipeline's per-document failure isolation
            return False
        if not self.extractor.workers_running:
            return False  # extracted here, when collected: nothing would overlap
        self._started[tuple(c.id for c in chunks)] = started
        return True

    def extract(self, chunks: Sequence[Chunk]) -> list[ChunkExtraction]:
        key = tuple(c.id for c in chunks)
        started = self._started.pop(key, None)
        if started is None:  # part of a started batch (some of its documents failed to embed): not collected
            wanted = set(key)
            for other in [k for k in self._started if wanted.intersection(k)]:
                del self._started[other]
        return list(started if started is not None else self.extractor.extract(chunks))

    def replace(self, conn: sqlite3.Connection, doc_ids: Sequence[str], extractions: Sequence[ChunkExtraction]) -> None:
        """Inside the caller's transaction: drop what these documents said, then store what they say now."""
        self.store.delete_documents(doc_ids)
        self.store.add(extractions)

    def close(self) -> None:
        self._started.clear()
        self.extractor.close()
