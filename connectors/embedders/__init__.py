"""Embedders: sentence-transformers models (torch, or ONNX Runtime or OpenVINO on the CPU), plus an on-disk cache
in front of any embedder.

``make_embedder`` resolves a name through ``ragkit.registry.embedders``: an exact registered name first, then a
family (the part before the first ``-``: ``hashing-64`` -> ``hashing``), else ``sentence-transformers``, which
takes any model name or local directory. Each entry is ``make(name, *, device, batch_size) -> Embedder``.

A sentence-transformers model runs on torch unless its name carries an encoder suffix: ``MODEL@onnx`` (ONNX
Runtime, fp32), ``MODEL@onnx-int8`` (int8 weights), ``MODEL@openvino`` (OpenVINO, fp32) or ``MODEL@openvino-bf16``
(OpenVINO, bfloat16 matrix products) go to the ``onnx`` and ``openvino`` entries. That name is the embedder's
``name``, so an index's manifest records the encoder and its queries use the same one; a name without a suffix
(every index made before the suffix existed) is torch fp32. ``make_embedder(model, backend=..., precision=...)``
picks the encoder of a new index from the settings (:func:`resolve_backend`).
"""

from __future__ import annotations

from typing import Literal

from ragkit.connectors.embedders.cache import EmbeddingCache
from ragkit.connectors.embedders.onnx import ENCODER_SEPARATOR, OnnxEmbedder
from ragkit.connectors.embedders.openvino import OpenVinoEmbedder, openvino_available
from ragkit.connectors.embedders.sentence_transformers import SentenceTransformerEmbedder
from ragkit.errors import ConfigError
from ragkit.protocols import Embedder
from ragkit.registry import embedders

DEFAULT_FAMILY = "sentence-transformers"
RUNTIMES = {cls.backend: cls for cls in (OnnxEmbedder, OpenVinoEmbedder)}  # backend -> class; registry entry names
ENCODERS = {  # name suffix -> (backend, precision)
    suffix: (backend, precision) for backend, cls in RUNTIMES.items() for precision, suffix in cls.name_suffixes.items()
}
# the precisions one runtime alone offers (every runtime has fp32) -> that runtime: int8 -> onnx, bf16 -> openvino
ONLY_ON = {precision: backend for backend, precision in ENCODERS.values() if precision != "fp32"}
Backend = Literal["auto", "torch", "onnx", "openvino"]
Precision = Literal["fp32", "int8", "bf16"]


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
    """The backend ``"auto"`` means for a new index of ``model`` at ``precision`` (any other backend is itself).

    On a GPU, or for a model the exported graph cannot reproduce: torch. On the CPU, fp32 runs on OpenVINO where it
    is installed (it embedded 1.18x as fast as ONNX Runtime on the project's machine, the same vectors:
    docs/benchmarks.md, "OpenVINO on the CPU"), else on ONNX Runtime; a precision only one runtime has
    (:data:`ONLY_ON`: int8, bf16) runs on that one.
    """
    if backend != "auto":
        return backend
    if precision in ONLY_ON:
        return ONLY_ON[precision]
    if not _exportable(model):
        return "torch"
    from ragkit.connectors.embedders.sentence_transformers import pick_device

    if pick_device(device) != "cpu":
        return "torch"
    if openvino_available():
        return "openvino"
    import importlib.util

    return "onnx" if importlib.util.find_spec("onnxruntime") is not None else "torch"


def _exportable(model: str) -> bool:
    """Whether ``model`` is a local mean-pooling model the exported ONNX graph reproduces."""
    from pathlib import Path

    from ragkit.connectors.embedders.onnx import check_exportable
    from ragkit.connectors.embedders.sentence_transformers import resolve_model

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
    sentence-transformers model (``MODEL@onnx``, ``MODEL@onnx-int8``: on ONNX Runtime; ``MODEL@openvino``,
    ``MODEL@openvino-bf16``: on OpenVINO).

    ``backend`` and ``precision`` (the settings of a new index) apply to a sentence-transformers model named
    without a suffix; ``backend="auto"`` is resolved by :func:`resolve_backend`.
    """
    family, dash, _ = name.partition("-")
    if (backend, precision) != ("torch", "fp32") and name not in embedders and not (dash and family in embedders):
        model, named_backend, _ = split_encoder(name)
        if named_backend == "torch":
            chosen = resolve_backend(model, backend, precision, device)
            if chosen == "torch" and precision in ONLY_ON:
                runs_on = ONLY_ON[precision]
                raise ConfigError(
                    f"embedder: {precision} runs on the {runs_on} backend; set backend = '{runs_on}' or 'auto'"
                )
            name = encoder_name(model, chosen, precision)
    runtime = split_encoder(name)[1]
    if runtime in RUNTIMES:
        key = runtime
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
    return _runtime_embedder(OnnxEmbedder, name, device, batch_size)


def openvino_embedder(name: str, *, device: str = "auto", batch_size: int | None = None) -> Embedder:
    """The ``openvino`` entry: ``MODEL@openvino`` or ``MODEL@openvino-bf16`` on OpenVINO (CPU); a bare model is
    fp32."""
    return _runtime_embedder(OpenVinoEmbedder, name, device, batch_size)


def _runtime_embedder(cls: type[OnnxEmbedder], name: str, device: str, batch_size: int | None) -> Embedder:
    model, backend, precision = split_encoder(name)
    if backend != cls.backend:
        precision = "fp32"
    if device not in ("auto", "cpu"):
        raise ConfigError(
            f"embedder {name!r} runs on {cls.backend} on the CPU, not on device {device!r} (set device = 'auto' or "
            "'cpu', or build the index with backend = 'torch')"
        )
    return cls(model, precision=precision, batch_size=batch_size)


def hashing_embedder(name: str, *, device: str = "auto", batch_size: int | None = None) -> Embedder:
    """The ``hashing`` family: ``hashing-<dim>`` is ``ragkit.testing.HashingEmbedder(dim)`` (no model)."""
    dim = name.removeprefix("hashing-")
    if dim == name or not dim.isdigit():
        return sentence_transformer_embedder(name, device=device, batch_size=batch_size)  # a model's name, as before
    from ragkit.testing import HashingEmbedder

    return HashingEmbedder(int(dim))


__all__ = ["EmbeddingCache", "OnnxEmbedder", "OpenVinoEmbedder", "SentenceTransformerEmbedder", "make_embedder"]
