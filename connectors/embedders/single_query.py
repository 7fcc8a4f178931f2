"""One query through a sentence-transformers model on the CPU, without ``encode``'s per-call bookkeeping.

``SentenceTransformer.encode`` is built for batches: per call it puts every module in eval mode (a walk over
all submodules), validates its keyword arguments, sorts the inputs by length, infers their modality, merges
processor settings, calls the Hugging Face tokenizer through its Python wrapper, filters the forward's keyword
arguments and stacks the rows again. For one short query on a 2-core CPU that was 0.7-1.8 ms around a 6-30 ms
forward (``bench/query_path.py --stages``), more than everything else ragkit does for a dense query.

:class:`SingleQueryEncoder` does the same computation as ``encode([text], normalize_embeddings=True)`` for the
plain stack ragkit ships (Transformer -> mean Pooling -> Normalize, text only, no prompt): the tokenizer's Rust
core encodes the text (a private copy, truncating at the model's ``max_seq_length``, as ``encode`` does), the
encoder runs on exactly the tensors ``encode`` would give it, and the model's own Pooling and Normalize modules
and ``encode``'s final normalization follow, so the vector is bit for bit ``encode``'s (tests check this).
``IndexStore.embed_queries`` uses it for single queries when :meth:`SingleQueryEncoder.of` accepts the embedder;
batches, GPUs and any other model go through the embedder as before.

>>> encoder = SingleQueryEncoder.of(embedder)   # None unless the embedder is such a model on the CPU
>>> encoder("who founded the company?").shape
(1, 384)
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np

TEXT_FORWARD = {"method": "forward", "method_output_name": "last_hidden_state"}
INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")


class SingleQueryEncoder:
    """``model.encode([text], normalize_embeddings=True)`` for one text, lean (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        import torch

        self._torch = torch
        self.model = model
        self.transformer = model[0]
        self.encoder = self.transformer.auto_model
        self.heads = list(model)[1:]  # Pooling, then Normalize when the model has one
        tokenizer = self.transformer.tokenizer
        self.input_names = tuple(name for name in INPUT_NAMES if name in tokenizer.model_input_names)
        self._source = tokenizer.backend_tokenizer
        self._lock = threading.Lock()
        self._length: int | None = None
        self._fast: Any = None
        self._rust()  # built now, so the first query pays nothing

    @classmethod
    def of(cls, embedder: object) -> SingleQueryEncoder | None:
        """An encoder for ``embedder``'s model, or None when it is not a plain mean-pooling text model on the CPU
        (then the embedder's own ``embed_queries`` is the path)."""
        model = getattr(embedder, "model", None)
        if model is None or type(model).__name__ != "SentenceTransformer":
            return None
        import torch

        from ragkit.connectors.embedders.sentence_transformers import mean_pooling_model

        try:
            plain = (
                getattr(model, "backend", "torch") == "torch"
                and isinstance(model[0].auto_model, torch.nn.Module)
                and mean_pooling_model(model)
                and str(getattr(model, "device", "cpu")).startswith("cpu")
                and getattr(model, "default_prompt_name", None) is None
                and getattr(model, "truncate_dim", None) is None
                and getattr(model, "_distributed_inference", None) is None
                and not getattr(model[0], "do_lower_case", False)
                and dict(getattr(model[0], "modality_config", {}).get("text", {})) == TEXT_FORWARD
                and "message" not in getattr(model[0], "modality_config", {})
                and not getattr(model[0], "processing_kwargs", None)
                and getattr(model[0].tokenizer, "backend_tokenizer", None) is not None
                and not getattr(model[0].auto_model.config, "output_hidden_states", False)
            )
        except (AttributeError, TypeError, IndexError):
            return None
        return cls(model) if plain else None

    def _rust(self) -> Any:
        """The private Rust tokenizer, truncating at the model's current ``max_seq_length``, without padding."""
        length = self.transformer.max_seq_length
        if self._fast is None or length != self._length:
            with self._lock:
                fast = copy.deepcopy(self._source)
                fast.no_padding()
                if length is None:
                    fast.no_truncation()
                else:
                    fast.enable_truncation(int(length))
                self._fast, self._length = fast, length
        return self._fast

    @property
    def usable(self) -> bool:
        """False while the model is in training mode (dropout on): ``encode`` would switch it to eval first."""
        return not self.encoder.training

    def tokenize(self, text: str) -> dict[str, Any]:
        """The encoder's input tensors for ``text`` (batch of one, int64), as ``encode`` builds them."""
        torch = self._torch
        encoding = self._rust().encode(text)
        rows = torch.tensor([encoding.ids, encoding.type_ids, encoding.attention_mask], dtype=torch.long)
        inputs = {"input_ids": rows[0:1], "token_type_ids": rows[1:2], "attention_mask": rows[2:3]}
        return {name: inputs[name] for name in (*self.input_names, "attention_mask")}

    def forward(self, inputs: dict[str, Any]) -> Any:
        """The encoder's last hidden state (call inside ``torch.inference_mode``)."""
        model_inputs = {name: inputs[name] for name in self.input_names}
        return self.encoder(**model_inputs, return_dict=True).last_hidden_state

    def __call__(self, text: str) -> np.ndarray:
        """The normalized float32 embedding of ``text``, shape ``(1, dim)``."""
        torch = self._torch
        inputs = self.tokenize(text)
        with torch.inference_mode():
            features: dict[str, Any] = {"token_embeddings": self.forward(inputs),
                                        "attention_mask": inputs["attention_mask"]}
            for head in self.heads:
                features = head.forward(features)
            vector = torch.nn.functional.normalize(features["sentence_embedding"], p=2, dim=1)
            return np.ascontiguousarray(vector.numpy(), dtype=np.float32)
