"""The ONNX Runtime embedder: the packaged MiniLM exported once per session into a temporary cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from embedder_checks import TEXTS, cosines, modules_a_query_process_imports

from ragkit.config import Settings
from ragkit.connectors.embedders import encoder_name, make_embedder, resolve_backend, split_encoder
from ragkit.connectors.embedders import onnx as onnx_module
from ragkit.connectors.embedders.onnx import OnnxEmbedder
from ragkit.errors import ConfigError, EmbedderMismatchError
from ragkit.index import Index

pytest.importorskip("onnxruntime")

INT8_MIN_COSINE = 0.97  # measured: 0.980 here (the one-letter text); 0.99 min over the shared sets (benchmarks.md)


@pytest.fixture(scope="session")
def onnx_fp32(onnx_cache: Path) -> OnnxEmbedder:
    return OnnxEmbedder(precision="fp32")


@pytest.fixture(scope="session")
def onnx_int8(onnx_cache: Path, onnx_fp32: OnnxEmbedder) -> OnnxEmbedder:
    return OnnxEmbedder(precision="int8")


def test_fp32_matches_torch(onnx_fp32, minilm):
    vectors = onnx_fp32.embed_documents(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors, minilm.embed_documents(TEXTS)).min() > 1 - 1e-4
    assert (onnx_fp32.dim, onnx_fp32.max_tokens) == (minilm.dim, minilm.max_tokens)


def test_fp32_graph_is_fused_and_int8_is_not(onnx_fp32, onnx_int8):
    """fp32 runs ONNX Runtime's fused BERT operators; int8 is quantized from the plain export, as it was measured."""
    import onnx

    def ops(path: Path) -> set[str]:
        return {node.op_type for node in onnx.load(str(path)).graph.node}

    fused = ops(onnx_fp32.model_path)
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= fused and "Softmax" not in fused
    assert "Attention" not in ops(onnx_int8.model_path)


def test_int8_agrees_with_torch(onnx_int8, minilm):
    vectors = onnx_int8.embed_documents(TEXTS)
    assert vectors.dtype == np.float32
    assert cosines(vectors, minilm.embed_documents(TEXTS)).min() > INT8_MIN_COSINE
    assert onnx_int8.name == "all-MiniLM-L6-v2@onnx-int8" and onnx_int8.model_path.stat().st_size < 40e6


def test_query_paths_agree_with_batches(onnx_fp32):
    batch = onnx_fp32.embed_documents(TEXTS)
    one_by_one = np.stack([onnx_fp32.embed_query(t) for t in TEXTS])
    assert np.abs(batch - one_by_one).max() < 1e-5  # padding and sorting change nothing
    assert np.array_equal(onnx_fp32.embed_queries(TEXTS[:1])[0], onnx_fp32.embed_query(TEXTS[0]))
    assert onnx_fp32.embed_documents([]).shape == (0, 384)
    assert onnx_fp32.embed_query("lone \ud800 surrogate").shape == (384,)  # cannot cross into Rust as is
    spans = onnx_fp32.token_offsets("a \ud800 b")
    assert (spans[0], spans[-1]) == ((0, 1), (4, 5))


def test_batches_keep_to_the_token_budget(onnx_fp32, monkeypatch):
    """Runs hold at most ``max_batch_tokens`` padded tokens (one long text alone still runs) and the vectors are
    the same as one text a run."""
    texts = [f"{t} {' '.join(['word'] * (7 * i))}" for i, t in enumerate(TEXTS * 3)]
    shapes: list[tuple[int, int]] = []
    run = onnx_fp32._run

    def recorded(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        shapes.append(ids.shape)
        return run(ids, lengths)

    monkeypatch.setattr(onnx_fp32, "_run", recorded)
    monkeypatch.setattr(onnx_fp32, "max_batch_tokens", 200)
    vectors = onnx_fp32.embed_documents(texts)
    assert len(shapes) > 2 and all(rows * width <= 200 or rows == 1 for rows, width in shapes)
    assert any(rows > 1 for rows, _ in shapes) and any(width > 200 for _, width in shapes)  # one long text alone
    assert sum(rows for rows, _ in shapes) == len(texts)
    monkeypatch.setattr(onnx_fp32, "max_batch_tokens", 10**9)
    monkeypatch.setattr(onnx_fp32, "batch_size", 1)
    assert np.abs(vectors - onnx_fp32.embed_documents(texts)).max() < 1e-5


def test_tokens_match_the_torch_embedder(onnx_fp32, minilm):
    for text in TEXTS:
        assert onnx_fp32.count_tokens(text) == minilm.count_tokens(text)
        assert onnx_fp32.token_offsets(text) == minilm.token_offsets(text)
    assert onnx_fp32.count_tokens(TEXTS[-2]) > onnx_fp32.max_tokens  # counts are not truncated


def test_second_construction_loads_the_cached_file(onnx_fp32, onnx_cache, monkeypatch):
    stamp = onnx_fp32.model_path.stat().st_mtime_ns

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_module, "export_fp32", no_export)
    monkeypatch.setattr(onnx_module, "quantize_int8", no_export)
    again = OnnxEmbedder(precision="fp32")
    assert again.model_path == onnx_fp32.model_path and again.model_path.stat().st_mtime_ns == stamp
    assert onnx_fp32.model_path.parent.parent == onnx_cache
    assert not list(onnx_cache.glob("*/.export-*"))  # no scratch left behind


def test_cache_key_follows_the_model_files(tmp_path, onnx_fp32):
    from ragkit.connectors.embedders.sentence_transformers import resolve_model

    model = Path(resolve_model("all-MiniLM-L6-v2"))
    copy = tmp_path / "model"
    copy.mkdir()
    for path in model.iterdir():
        if path.is_file():
            (copy / path.name).symlink_to(path)
    (copy / "1_Pooling").symlink_to(model / "1_Pooling")
    key = onnx_module.export_key(copy, "fp32")
    assert key == onnx_module.export_key(model, "fp32") != onnx_module.export_key(model, "int8")
    (copy / "config.json").unlink()
    config = json.loads((model / "config.json").read_text()) | {"layer_norm_eps": 1e-6}
    (copy / "config.json").write_text(json.dumps(config))
    assert onnx_module.export_key(copy, "fp32") != key


def test_the_query_process_never_imports_torch(onnx_int8, onnx_cache):
    assert modules_a_query_process_imports('all-MiniLM-L6-v2@onnx-int8', onnx_cache) == []


def test_encoder_names():
    assert split_encoder("all-MiniLM-L6-v2") == ("all-MiniLM-L6-v2", "torch", "fp32")  # old manifests
    assert split_encoder("all-MiniLM-L6-v2@onnx") == ("all-MiniLM-L6-v2", "onnx", "fp32")
    assert split_encoder("/models/m@onnx-int8") == ("/models/m", "onnx", "int8")
    assert split_encoder("m@openvino-bf16") == ("m", "openvino", "bf16")
    assert split_encoder("/models/a@b") == ("/models/a@b", "torch", "fp32")  # not a suffix: part of the path
    encoders = [("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "bf16")]
    for backend, precision in encoders:
        assert split_encoder(encoder_name("m", backend, precision)) == ("m", backend, precision)
    assert len({encoder_name("m", *encoder) for encoder in encoders}) == len(encoders)
    with pytest.raises(ConfigError, match="no torch int8 encoder"):
        encoder_name("m", "torch", "int8")
    with pytest.raises(ConfigError, match="no openvino int8 encoder"):
        encoder_name("m", "openvino", "int8")


def test_settings_validate_the_encoder():
    assert (Settings().embedder.backend, Settings().embedder.precision) == ("auto", "fp32")
    with pytest.raises(ConfigError, match="int8' runs on the onnx backend"):
        Settings().merged(embedder={"backend": "torch", "precision": "int8"})
    with pytest.raises(ConfigError, match="bf16' runs on the openvino backend"):
        Settings().merged(embedder={"backend": "onnx", "precision": "bf16"})
    with pytest.raises(ConfigError, match="int8' runs on the onnx backend"):
        Settings().merged(embedder={"backend": "openvino", "precision": "int8"})
    with pytest.raises(ConfigError, match="embedder.backend.*'auto', 'torch', 'onnx' or 'openvino'"):
        Settings().merged(embedder={"backend": "tensorflow"})
    with pytest.raises(ConfigError, match="embedder.precision.*'fp32', 'int8' or 'bf16'"):
        Settings().merged(embedder={"precision": "fp16"})
    with pytest.raises(ConfigError, match="run on the CPU"):
        Settings().merged(embedder={"backend": "onnx", "device": "cuda"})
    with pytest.raises(ConfigError, match="run on the CPU"):
        Settings().merged(embedder={"precision": "bf16", "device": "cuda:0"})
    with pytest.raises(ConfigError, match="runs on onnx on the CPU"):
        make_embedder("all-MiniLM-L6-v2@onnx", device="cuda:0")
    with pytest.raises(ConfigError, match="bf16 runs on the openvino backend"):
        make_embedder("all-MiniLM-L6-v2", backend="torch", precision="bf16")


@pytest.mark.parametrize("openvino", [True, False])
def test_auto_resolves_by_device_precision_and_installed_runtimes(openvino, monkeypatch):
    from ragkit.connectors import embedders

    monkeypatch.setattr(embedders, "openvino_available", lambda: openvino)
    assert resolve_backend("all-MiniLM-L6-v2", "auto", "fp32", "cpu") == ("openvino" if openvino else "onnx")
    assert resolve_backend("all-MiniLM-L6-v2", "auto", "fp32", "cuda") == "torch"
    assert resolve_backend("all-MiniLM-L6-v2", "auto", "int8", "cpu") == "onnx"
    assert resolve_backend("all-MiniLM-L6-v2", "auto", "bf16", "cpu") == "openvino"
    assert resolve_backend("all-MiniLM-L6-v2", "onnx", "fp32", "cpu") == "onnx"
    assert resolve_backend("all-MiniLM-L6-v2", "torch", "fp32", "cpu") == "torch"
    # not a local mean-pooling model
    assert resolve_backend("/no/such/model", "auto", "fp32", "cpu") == "torch"


def test_backend_settings_leave_other_embedders_alone():
    hashing = make_embedder("hashing-32", backend="onnx", precision="int8")
    assert hashing.name == "hashing-32"


def write_docs(folder: Path) -> list[Path]:
    folder.mkdir()
    texts = {
        "paris.txt": "The Eiffel Tower in Paris was completed in 1889 by Gustave Eiffel's company.",
        "darwin.txt": "Charles Darwin wrote On the Origin of Species, published in 1859.",
        "brca.txt": "BRCA1 mutations raise the lifetime risk of breast and ovarian cancer.",
    }
    for name, text in texts.items():
        (folder / name).write_text(text)
    return sorted(folder.iterdir())


def test_the_manifest_records_int8_and_a_reopened_index_uses_it(tmp_path, onnx_int8, minilm):
    settings = Settings().merged(embedder={"backend": "onnx", "precision": "int8"}, graph={"enabled": False})
    with Index.create(tmp_path / "idx", settings) as index:
        index.add(write_docs(tmp_path / "docs"))
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["embedder"] == "all-MiniLM-L6-v2@onnx-int8"

    torch_settings = Settings().merged(embedder={"backend": "torch"})  # settings choose new indexes' encoders only
    with Index.open(tmp_path / "idx", torch_settings) as index:
        assert index.embedder.name == "all-MiniLM-L6-v2@onnx-int8"
        assert isinstance(index.embedder, OnnxEmbedder) and index.embedder.precision == "int8"
        question = "who built the tower in Paris?"
        assert np.array_equal(index.store.embed_queries([question])[0], onnx_int8.embed_query(question))
        assert index.retrieve(question, k=1, mode="dense")[0].chunk.doc_id == index.retrieve(
            question, k=1, mode="bm25"
        )[0].chunk.doc_id

    with pytest.raises(EmbedderMismatchError, match="built with embedder 'all-MiniLM-L6-v2@onnx-int8'"):
        Index.open(tmp_path / "idx", embedder=minilm)


def test_an_index_without_an_encoder_suffix_stays_on_torch(tmp_path, minilm):
    with Index.create(tmp_path / "idx", graph=False, embedder=minilm) as index:  # what every older index records
        assert index.manifest.embedder == "all-MiniLM-L6-v2"
    settings = Settings().merged(embedder={"backend": "onnx", "precision": "int8"})
    with Index.open(tmp_path / "idx", settings) as index:
        assert type(index.embedder).__name__ == "SentenceTransformerEmbedder"


OFFSET_TEXTS = [*TEXTS, "", "   ", "lone \ud800 surrogate", "tab\tand\nnewlines  twice", "Ǆ ﬁ ＡＢＣ ⅷ"]


@pytest.mark.parametrize("which", ["onnx", "torch"])
def test_token_offsets_batch_equals_one_text_at_a_time(which, onnx_fp32, minilm):
    embedder = onnx_fp32 if which == "onnx" else minilm
    texts = OFFSET_TEXTS if which == "onnx" else [t for t in OFFSET_TEXTS if "\ud800" not in t]
    assert embedder.token_offsets_batch(texts) == [embedder.token_offsets(t) for t in texts]


def test_the_index_pipeline_tokenizes_documents_ahead_with_the_same_chunks(onnx_fp32, tmp_path, monkeypatch):
    """Chunking asks the embedder for each document's tokens in one call per group (the Rust tokenizer spreads
    them over the cores); the chunks are those of one call per document."""
    from ragkit.pipelines.indexing import _make_chunker
    from ragkit.types import Document

    rng = np.random.default_rng(0)
    words = " ".join(TEXTS).split()
    docs = [
        Document(id=f"d{i}", text=" ".join(rng.choice(words, size=int(rng.integers(5, 400)))), source=f"/c/d{i}.txt",
                 title=f"Title {i}" if i % 2 else "")
        for i in range(40)
    ]
    docs.append(Document(id="md", text="# Heading\n\n" + " ".join(words * 3), source="/c/notes.md"))
    docs.append(Document(id="long", text=" ".join(words * 40), source="/c/long.txt"))  # over 20,000 characters
    one_at_a_time = []
    calls: list[str] = []
    real = OnnxEmbedder.token_offsets

    def counted(self, text):
        calls.append(text)
        return real(self, text)

    monkeypatch.setattr(OnnxEmbedder, "token_offsets", counted)
    with Index.create(tmp_path / "idx", Settings().merged(graph={"enabled": False}), embedder=onnx_fp32) as index:
        index.add_documents(docs)
        stored = sorted((c.id, c.text) for batch in index.catalog.iter_chunks() for c in batch)
        assert calls == [docs[-1].text], "documents were tokenized one at a time"
        chunker = _make_chunker(index.store)  # the embedder itself, one document at a time
        one_at_a_time = sorted((c.id, c.text) for d in docs for c in chunker.split(d))
    assert stored == one_at_a_time and len(stored) > len(docs)
