"""OpenVINO embedder for CPU: the exported ONNX graph of :mod:`ragkit.connectors.embedders.onnx`, compiled by
OpenVINO's CPU plugin, in fp32 (the CPU default for new indexes) or with bfloat16 matrix products.

On the project's 2-core AMD EPYC (Zen 4: AVX-512 and AVX512-BF16), over 600 passages of the shared sets
(``bench/quantized.py``): ONNX Runtime fp32 embedded 37.7 passages/s, OpenVINO fp32 44.5/s with the same vectors
(cosine to torch's 0.9999999 at least) and the same retrieval figures, OpenVINO bf16 79.2/s with a cosine of
0.99997 to fp32 (docs/benchmarks.md, "OpenVINO on the CPU"). bf16 changes the order of a few near-ties, which is
why it is an option (``precision = "bf16"``) and not the default. On a CPU without native bf16 the bf16 encoder
runs its products in fp32.

The graph is the plain fp32 export (OpenVINO makes its own fusions; the ONNX Runtime one is fused with
``com.microsoft`` operators), cached beside the others; OpenVINO's compiled blob is cached in the ``openvino``
folder of the same cache, so a later process compiles in about 0.1 s. Nothing is downloaded.

>>> embedder = OpenVinoEmbedder(precision="bf16")       # packaged all-MiniLM-L6-v2    # doctest: +SKIP
>>> embedder.embed_documents(["a passage"]).shape                                     # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np

from ragkit.connectors.embedders.onnx import OnnxEmbedder
from ragkit.devices import process_cores

NAME_SUFFIXES = {"fp32": "openvino", "bf16": "openvino-bf16"}  # the embedder's name is MODEL@<suffix>


@functools.cache
def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bfloat16 natively on this machine (AVX512-BF16 or AMX)."""
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


class OpenVinoEmbedder(OnnxEmbedder):
    """Normalized float32 embeddings from a sentence-transformers model compiled by OpenVINO for the CPU.

    ``precision``: ``"bf16"`` (matrix products in bfloat16 where the CPU has it natively, else fp32: the vectors
    agree either way to a cosine of 0.99997) or ``"fp32"``. Batching, tokenization and the cached export are
    :class:`~ragkit.connectors.embedders.onnx.OnnxEmbedder`'s. Each thread runs its own inference request, so
    concurrent queries (``ragkit serve``) are safe.
    """

    backend = "openvino"
    name_suffixes = NAME_SUFFIXES

    def _require_runtime(self) -> None:
        if not openvino_available():
            raise ImportError("the openvino embedder needs OpenVINO (pip install openvino)")

    def _export_of(self, precision: str) -> str:
        return "plain"

    def _open(self, threads: int | None) -> int | None:
        import openvino

        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",  # one stream, every thread on one request: a query, or one batch
            "INFERENCE_NUM_THREADS": threads or process_cores(),
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" and native_bf16() else "f32",
            "CACHE_DIR": str(self.model_path.parent.parent / "openvino"),  # beside the exports
        }
        self._compiled = openvino.Core().compile_model(str(self.model_path), "CPU", config)
        self._inputs = {port.get_any_name() for port in self._compiled.inputs}
        self._requests = threading.local()
        width = self._compiled.outputs[0].get_partial_shape()[-1]
        return width.get_length() if width.is_static else None

    def _infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        result = request.infer(feeds, share_inputs=True, share_outputs=False)  # a copy: the request's is reused
        return np.asarray(result[0])
