"""LlamaIndex adapter: a ragkit index as a ``llama_index.core`` retriever returning ``NodeWithScore``.

Each hit becomes a ``TextNode`` whose ``id_`` is the chunk id, with the chunk's character offsets, a SOURCE
relationship to its document, and metadata carrying source, document id, chunk id, offsets and mode (plus the
document's own metadata). Only ``source`` and ``title`` reach the LLM prompt; the rest is bookkeeping.

>>> from llama_index.core.query_engine import RetrieverQueryEngine
>>> retriever = RagkitLlamaRetriever(Index.open("my-index"), mode="hybrid", k=4)
>>> engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
>>> engine.query("how are chunk ids kept stable?").source_nodes
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ragkit.errors import ConfigError, missing_extra

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.schema import (
        NodeRelationship,
        NodeWithScore,
        QueryBundle,
        RelatedNodeInfo,
        TextNode,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("llama-index-core", "llamaindex") from exc

from ragkit.index import Index
from ragkit.registry import retrieval_modes
from ragkit.types import Hit

_RAW_TEXT = "_langchain_page_content"  # written by RagkitVectorStore; never shown as metadata
_BOOKKEEPING = ["doc_id", "chunk_id", "start", "end", "score", "mode", "explain"]


def _document_meta(index: Index, doc_ids: Iterable[str]) -> dict[str, Mapping[str, Any]]:
    """The metadata each document was indexed with (``ragkit.Document.meta``), by document id."""
    return {doc_id: doc.meta for doc_id, doc in index.documents(doc_ids).items()}


def hit_to_node(hit: Hit, document_meta: Mapping[str, Any]) -> NodeWithScore:
    """One ragkit hit as a scored LlamaIndex node."""
    chunk = hit.chunk
    metadata = {k: v for k, v in document_meta.items() if k != _RAW_TEXT}
    metadata.update(
        source=hit.source,
        doc_id=chunk.doc_id,
        chunk_id=chunk.id,
        start=chunk.start,
        end=chunk.end,
        score=hit.score,
        mode=hit.retriever,
    )
    if chunk.meta.get("title"):
        metadata["title"] = chunk.meta["title"]
    if hit.explain is not None:
        metadata["explain"] = dict(hit.explain)
    node = TextNode(
        id_=chunk.id,
        text=chunk.text,
        metadata=metadata,
        start_char_idx=chunk.start,
        end_char_idx=chunk.end,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=chunk.doc_id)},
        excluded_llm_metadata_keys=[k for k in metadata if k in _BOOKKEEPING],
        excluded_embed_metadata_keys=[k for k in metadata if k in _BOOKKEEPING],
    )
    return NodeWithScore(node=node, score=hit.score)


class RagkitLlamaRetriever(BaseRetriever):
    """A LlamaIndex retriever over a ragkit index, in any retrieval mode (dense, bm25, hybrid, graph...).

    ``index`` is a ``ragkit.Index`` or the path of one; ``where`` filters on ``doc_id``, ``source`` or the
    tags given at indexing time.
    """

    def __init__(
        self,
        index: Index | str | os.PathLike[str],
        mode: str | None = None,
        k: int = 4,
        where: Mapping[str, Any] | None = None,
        *,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if mode is not None and mode not in retrieval_modes:
            raise ConfigError(f"mode: unknown retrieval mode {mode!r} (valid: {', '.join(retrieval_modes.names())})")
        if k < 1:
            raise ConfigError(f"k must be at least 1 (got {k})")
        if isinstance(index, str | os.PathLike):
            index = Index.open(index)
        if not isinstance(index, Index):
            raise TypeError(f"index: expected a ragkit.Index or the path of one, got {type(index).__name__}")
        self.index = index
        self.mode = mode
        self.k = k
        self.where = dict(where) if where else None
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.index.retrieve(query_bundle.query_str, self.k, self.mode, self.where)
        meta = _document_meta(self.index, (h.chunk.doc_id for h in hits))
        return [hit_to_node(h, meta.get(h.chunk.doc_id, {})) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)


__all__ = ["RagkitLlamaRetriever", "hit_to_node"]
