"""Knowledge-graph extraction as a stage of the index pipeline.

Extraction runs before a batch's catalog transaction (spaCy is slow; the transaction stays short), and the
graph facts of the batch's documents are replaced inside the same transaction as their chunks, so the graph
always matches the catalog.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
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
        if self.extractor.uses_processes(expected_chunks):
            self.extractor.start()  # the workers load spaCy while the first batch is embedded

    def extract(self, chunks: Sequence[Chunk]) -> list[ChunkExtraction]:
        return list(self.extractor.extract(chunks))

    def replace(self, conn: sqlite3.Connection, doc_ids: Sequence[str], extractions: Sequence[ChunkExtraction]) -> None:
        """Inside the caller's transaction: drop what these documents said, then store what they say now."""
        self.store.delete_documents(doc_ids)
        self.store.add(extractions)

    def close(self) -> None:
        self.extractor.close()
