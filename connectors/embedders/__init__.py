"""Embedders: sentence-transformers models (torch, or ONNX Runtime on the CPU), plus an on-disk cache in front
of any embedder.

``make_embedder`` resolves a name through ``ragkit.registry.embedders``: an exact registered name first, then a
family (the part before the first ``-``: ``hashing-64`` -> ``hashing``), else ``sentence-transformers``, which
takes any model name or local directory. Each entry is ``make(name, *, device, batch_size) -> Embedder``.

A sentence-transformers model runs on torch unless its name carries an encoder suffix: ``MODEL@onnx`` (ONNX
Runtime, fp32) or ``MODEL@onnx-int8`` (int8 weights) go to the ``onnx`` entry. That name is the embedder's
``name``, so an index's manifest records the encoder and its queries use the same one; a name without a suffix
(every index made before the suffix existed) is torch fp32. ``make_embedder(model, backend=..., precision=...)``
picks the encoder of a new index from the settings (:func:`encoder_name`).
"""

from __future__ import annotations

from typing import Literal

from ragkit.connectors.embedders.cache import EmbeddingCache
from ragkit.connectors.embedders.onnx import ENCODER_SEPARATOR, NAME_SUFFIXES, OnnxEmbedder
from ragkit.connectors.embedders.sentence_transformers import SentenceTransformerEmbedder
from ragkit.errors import ConfigError
from ragkit.protocols import Embedder
from ragkit.registry import embedders

DEFAULT_FAMILY = "sentence-transformers"
ONNX_ENTRY = "onnx"
ENCODERS = {suffix: ("onnx", precision) for precision, suffix in NAME_SUFFIXES.items()}  # -> (backend, precision)
Backend = Literal["auto", "torch", "onnx"]
Precision = Literal["fp32", "int8"]
AUTO_CPU_BACKEND: Literal["torch", "onnx"] = "onnx"  # what "auto" picks on the CPU: docs/benchmarks.md says why


def split_encoder(name: str) -> tuple[str, str, str]:
    """``(model, backend, precision)`` of an embedder name: ``"m@onnx-int8"`` -> ``("m", "onnx", "int8")``; a
    name without a known suffix is a torch fp32 model."""
    model, separator, suffix = name.rpartition(ENCODER_SEPARATOR)
    if separator and model and suffix in ENCODERS:
        return (model, *ENCODERS[suffix])
    return name, "torch", "fp32"


def encoder_name(model: str, backend: str, precision: str) -> str:
    """The embedder name recording ``backend`` and ``precision`` (torch fp32: the model name itself)."""
    if (backend, precision) == ("torch", "fp32"):
        return model
    for suffix, encoder in ENCODERS.items():
        if encoder == (backend, precision):
            return f"{model}{ENCODER_SEPARATOR}{suffix}"
    valid = ", ".join(f"{b} {p}" for b, p in [("torch", "fp32"), *ENCODERS.values()])
    raise ConfigError(f"embedder: no {backend} {precision} encoder (valid: {valid})")


def resolve_backend(model: str, backend: str, precision: str, device: str) -> str:
    """The backend ``"auto"`` means for ``model``: torch on a GPU, else onnx for int8 and
    :data:`AUTO_CPU_BACKEND` for fp32 when the model can run there (a local mean-pooling model)."""
    if backend != "auto":
        return backend
    if precision == "int8":
        return "onnx"
    if AUTO_CPU_BACKEND == "torch" or not _onnx_capable(model):
        return "torch"
    from ragkit.connectors.embedders.sentence_transformers import pick_device

    return "onnx" if pick_device(device) == "cpu" else "torch"


def _onnx_capable(model: str) -> bool:
    import importlib.util
    from pathlib import Path

    from ragkit.connectors.embedders.onnx import check_exportable
    from ragkit.connectors.embedders.sentence_transformers import resolve_model

    if importlib.util.find_spec("onnxruntime") is None:
        return False
    directory = Path(resolve_model(model))
    try:
        check_exportable(directory)
    except (ValueError, OSError):
        return False
    return (directory / "config.json").is_file()


def make_embedder(
    name: str,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    backend: Backend | str = "torch",
    precision: Precision | str = "fp32",
) -> Embedder:
    """The embedder a manifest or setting names: ``hashing-<dim>`` (the test fake), a plugin's, or a
    sentence-transformers model (``MODEL@onnx``, ``MODEL@onnx-int8``: on ONNX Runtime).

    ``backend`` and ``precision`` (the settings of a new index) apply to a sentence-transformers model named
    without a suffix; ``backend="auto"`` is resolved by :func:`resolve_backend`.
    """
    family, dash, _ = name.partition("-")
    if (backend, precision) != ("torch", "fp32") and name not in embedders and not (dash and family in embedders):
        model, named_backend, _ = split_encoder(name)
        if named_backend == "torch":
            chosen = resolve_backend(model, backend, precision, device)
            if (chosen, precision) == ("torch", "int8"):
                raise ConfigError("embedder: int8 runs on the onnx backend; set backend = 'onnx' or 'auto'")
            name = encoder_name(model, chosen, precision)
    if split_encoder(name)[1] == "onnx":
        key = ONNX_ENTRY
    elif name in embedders:
        key = name
    elif dash and family in embedders:
        key = family
    else:
        key = DEFAULT_FAMILY
    embedder: Embedder = embedders.get(key)(name, device=device, batch_size=batch_size)
    return embedder


def sentence_transformer_embedder(name: str, *, device: str = "auto", batch_size: int | None = None) -> Embedder:
    """The ``sentence-transformers`` entry: any model name or local directory."""
    return SentenceTransformerEmbedder(name, device=device, batch_size=batch_size)


def onnx_embedder(name: str, *, device: str = "auto", batch_size: int | None = None) -> Embedder:
    """The ``onnx`` entry: ``MODEL@onnx`` or ``MODEL@onnx-int8`` on ONNX Runtime (CPU); a bare model is fp32."""
    model, _, precision = split_encoder(name)
    if device not in ("auto", "cpu"):
        raise ConfigError(
            f"embedder {name!r} runs on ONNX Runtime on the CPU, not on device {device!r} (set device = 'auto' or "
            "'cpu', or build the index with backend = 'torch')"
        )
    return OnnxEmbedder(model, precision=precision, batch_size=batch_size)


def hashing_embedder(name: str, *, device: str = "auto", batch_size: int | None = None) -> Embedder:
    """The ``hashing`` family: ``hashing-<dim>`` is ``ragkit.testing.HashingEmbedder(dim)`` (no model)."""
    dim = name.removeprefix("hashing-")
    if dim == name or not dim.isdigit():
        return sentence_transformer_embedder(name, device=device, batch_size=batch_size)  # a model's name, as before
    from ragkit.testing import HashingEmbedder

    return HashingEmbedder(int(dim))


__all__ = ["EmbeddingCache", "OnnxEmbedder", "SentenceTransformerEmbedder", "make_embedder"]
