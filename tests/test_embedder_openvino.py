"""The OpenVINO embedder: the packaged MiniLM's plain ONNX export compiled for the CPU, in fp32 and bf16."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from embedder_checks import TEXTS, cosines, modules_a_query_process_imports

from ragkit.config import Settings
from ragkit.connectors.embedders import make_embedder
from ragkit.connectors.embedders.openvino import OpenVinoEmbedder, native_bf16
from ragkit.index import Index

pytest.importorskip("openvino")

# measured on 600 MuSiQue passages: 0.99997 at least against ONNX Runtime fp32 (docs/benchmarks.md)
BF16_MIN_COSINE = 0.9999


@pytest.fixture(scope="session")
def openvino_fp32(onnx_cache: Path) -> OpenVinoEmbedder:
    return OpenVinoEmbedder(precision="fp32")


@pytest.fixture(scope="session")
def openvino_bf16(onnx_cache: Path, openvino_fp32: OpenVinoEmbedder) -> OpenVinoEmbedder:
    return OpenVinoEmbedder(precision="bf16")


def test_fp32_matches_torch(openvino_fp32, minilm):
    vectors = openvino_fp32.embed_documents(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors, minilm.embed_documents(TEXTS)).min() > 0.99999


def test_bf16_agrees_with_fp32_and_ranks_the_same(openvino_bf16, openvino_fp32):
    bf16, fp32 = openvino_bf16.embed_documents(TEXTS), openvino_fp32.embed_documents(TEXTS)
    assert np.allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-4)
    assert cosines(bf16, fp32).min() > BF16_MIN_COSINE
    query = openvino_bf16.embed_query("what causes breast cancer?")
    assert np.argsort(-(bf16 @ query)).tolist() == np.argsort(-(fp32 @ query)).tolist()


def test_bf16_runs_in_bf16_where_the_cpu_has_it(openvino_bf16, openvino_fp32):
    import openvino

    hint = "INFERENCE_PRECISION_HINT"
    assert (openvino_bf16._compiled.get_property(hint) == openvino.Type.bf16) == native_bf16()
    assert openvino_fp32._compiled.get_property(hint) == openvino.Type.f32
    if native_bf16():  # the two must then differ: bf16 rounds the matrix products
        assert not np.array_equal(openvino_bf16.embed_documents(TEXTS), openvino_fp32.embed_documents(TEXTS))


def test_query_paths_agree_with_batches(openvino_bf16):
    batch = openvino_bf16.embed_documents(TEXTS)
    for row, text in enumerate(TEXTS):
        assert cosines(openvino_bf16.embed_query(text)[None, :], batch[row : row + 1])[0] > 0.9999
    first = openvino_bf16.embed_query(TEXTS[0])
    openvino_bf16.embed_query(TEXTS[1])  # the request's output buffer is reused: the first vector must not change
    assert np.array_equal(first, openvino_bf16.embed_query(TEXTS[0]))


def test_threads_each_get_their_own_request(openvino_bf16):
    expected = [openvino_bf16.embed_query(text) for text in TEXTS]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for round_ in range(5):
                for row, text in enumerate(TEXTS):
                    results[(worker, round_ * len(TEXTS) + row)] = openvino_bf16.embed_query(text)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 4 * 5 * len(TEXTS)
    for (_, slot), vector in results.items():
        assert np.array_equal(vector, expected[slot % len(TEXTS)])


def test_the_compiled_model_is_cached_beside_the_exports(openvino_bf16, onnx_cache):
    assert openvino_bf16.model_path.is_relative_to(onnx_cache)
    assert any((onnx_cache / "openvino").iterdir())


def test_the_manifest_records_bf16_and_a_reopened_index_uses_it(tmp_path, openvino_bf16):
    settings = Settings().merged(embedder={"backend": "openvino", "precision": "bf16"}, graph={"enabled": False})
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "paris.txt").write_text("The Eiffel Tower in Paris was completed in 1889 by Gustave Eiffel's company.")
    (docs / "darwin.txt").write_text("Charles Darwin wrote On the Origin of Species, published in 1859.")
    with Index.create(tmp_path / "idx", settings) as index:
        index.add(sorted(docs.iterdir()))
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["embedder"] == "all-MiniLM-L6-v2@openvino-bf16"

    onnx_settings = Settings().merged(embedder={"backend": "onnx"})  # settings choose new indexes' encoders only
    with Index.open(tmp_path / "idx", onnx_settings) as index:
        assert isinstance(index.embedder, OpenVinoEmbedder) and index.embedder.precision == "bf16"
        question = "who built the tower in Paris?"
        assert np.array_equal(index.store.embed_queries([question])[0], openvino_bf16.embed_query(question))
        assert index.retrieve(question, k=1, mode="dense")[0].source.endswith("paris.txt")


def test_the_default_settings_pick_openvino_fp32_on_the_cpu(onnx_cache):
    settings = Settings().embedder
    embedder = make_embedder(settings.model, backend=settings.backend, precision=settings.precision, device="cpu")
    assert isinstance(embedder, OpenVinoEmbedder) and embedder.name == "all-MiniLM-L6-v2@openvino"


def test_the_query_process_never_imports_torch(openvino_bf16, onnx_cache):
    assert modules_a_query_process_imports('all-MiniLM-L6-v2@openvino-bf16', onnx_cache) == []
