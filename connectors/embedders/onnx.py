"""ONNX Runtime embedder for CPU: a sentence-transformers model exported once to ONNX (fp32, or int8 weights),
cached on disk, then run without torch or transformers.

The first construction for a model directory and precision exports the transformer with mean pooling and L2
normalization inside the graph (this step imports torch), quantizes it for ``int8``
(``onnxruntime.quantization.quantize_dynamic``), and writes the file atomically under :func:`onnx_cache_dir`.
Every later process only loads it: the query path imports ``onnxruntime`` and ``tokenizers`` (the model's own
``tokenizer.json``), never torch. Nothing is downloaded.

>>> embedder = OnnxEmbedder()                        # packaged all-MiniLM-L6-v2, fp32    # doctest: +SKIP
>>> embedder.embed_documents(["a passage"]).shape                                         # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from ragkit.connectors.embedders.sentence_transformers import DEFAULT_MODEL, resolve_model
from ragkit.connectors.embedders.wordpiece import AsciiWordPiece
from ragkit.devices import process_cores

if TYPE_CHECKING:
    import onnxruntime
    import tokenizers

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
EXPORTS: tuple[str, ...] = (*PRECISIONS, "plain")  # the cached graphs: see exported_model
CACHE_ENV = "RAGKIT_ONNX_CACHE"
EXPORT_VERSION = 2  # bump when the exported graph changes: old cache entries are then ignored (2: fp32 fused)
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ENCODER_SEPARATOR = "@"
NAME_SUFFIXES = {"fp32": "onnx", "int8": "onnx-int8"}  # the embedder's name is MODEL@<suffix>: see make_embedder
# Rows x padded width of one run at most. On a CPU a batch that outgrows the caches runs slower per token:
# MiniLM over 512 HotpotQA passages (122 tokens on average) on 2 cores, 32 rows a run: 37-39 passages/s; at most
# 2,048 tokens a run: 45-46/s (SciFact, 240 tokens: 20-21 -> 23/s). It also bounds a run's memory.
MAX_BATCH_TOKENS = 2048
_MODEL_FILE = "model.onnx"
_SKIPPED_FILES = {"README.md", ".gitattributes"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def _rust_safe(text: str) -> str:
    """Lone surrogates cannot cross into the Rust tokenizer; one U+FFFD each keeps the offsets."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def onnx_cache_dir() -> Path:
    """Where exported models live: ``$RAGKIT_ONNX_CACHE``, else ``$RAGKIT_CACHE/onnx``, else
    ``$XDG_CACHE_HOME/ragkit/onnx`` (``~/.cache/ragkit/onnx``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("RAGKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ragkit"
    )
    return Path(base) / "onnx"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def export_key(model_dir: Path, precision: str) -> str:
    """A hash of the model directory's files (names and contents), the precision and the exporting versions."""
    digest = hashlib.sha256()
    files = [Path(root, name) for root, _, names in os.walk(model_dir, followlinks=True) for name in names]
    for path in sorted(p for p in files if p.is_file() and p.name not in _SKIPPED_FILES):
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    versions = [EXPORT_VERSION, OPSET, precision, _version("torch"), _version("onnxruntime")]
    digest.update(json.dumps(versions).encode())
    return digest.hexdigest()[:24]


def max_sequence_length(model_dir: Path) -> int:
    """The sentence-transformers ``max_seq_length`` (256 for MiniLM), else the transformer's position limit."""
    settings = model_dir / "sentence_bert_config.json"
    if settings.is_file():
        value = json.loads(settings.read_text()).get("max_seq_length")
        if value:
            return int(value)
    config = json.loads((model_dir / "config.json").read_text())
    return int(config.get("max_position_embeddings", 512))


def check_exportable(model_dir: Path) -> None:
    """ValueError unless the model is a plain Transformer -> mean Pooling (-> Normalize) stack with a fast
    tokenizer: the shape the exported graph reproduces."""
    problems = []
    if not (model_dir / "tokenizer.json").is_file():
        problems.append("no tokenizer.json")
    modules_file = model_dir / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
            problems.append(f"modules {kinds} are not Transformer, Pooling (, Normalize)")
        pooling_dir = model_dir / (modules[1].get("path", "") if len(modules) > 1 else "1_Pooling")
        pooling_file = pooling_dir / "config.json"
        if pooling_file.is_file():
            pooling = json.loads(pooling_file.read_text())
            modes = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True}
            if modes != {"pooling_mode_mean_tokens"} and pooling.get("pooling_mode") != "mean":
                problems.append(f"pooling {sorted(modes)} is not mean pooling")
    if problems:
        raise ValueError(f"{model_dir}: cannot run on the onnx backend: {'; '.join(problems)}")


def exported_model(model_dir: Path, precision: str, cache_dir: Path | None = None) -> Path:
    """The cached ONNX file for ``model_dir`` at ``precision``, exporting it first when missing (imports torch).

    ``precision`` is one of :data:`EXPORTS`: ``fp32`` (fused for ONNX Runtime), ``int8``, or ``plain`` (the fp32
    graph as exported, which OpenVINO compiles with its own fusions)."""
    if precision not in EXPORTS:
        raise ValueError(f"precision must be one of {', '.join(EXPORTS)} (got {precision!r})")
    folder = (cache_dir or onnx_cache_dir()) / f"{model_dir.name}-{export_key(model_dir, precision)}"
    target = folder / _MODEL_FILE
    if target.is_file():
        return target
    check_exportable(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _scratch_dir(folder) as scratch:
        plain, result = scratch / "plain.onnx", scratch / f"{precision}.onnx"
        try:
            export_fp32(model_dir, plain)
            if precision == "plain":
                result = plain
            elif precision == "fp32":
                fuse_transformer(model_dir, plain, result)
            else:  # from the plain graph: the fused operators would quantize differently (int8 was measured so)
                quantize_int8(plain, result)
        except ModuleNotFoundError as exc:
            raise ImportError(f"exporting to ONNX needs {exc.name} (pip install {exc.name})") from exc
        os.replace(result, target)  # atomic: a concurrent reader sees no file or the whole file
    return target


@contextlib.contextmanager
def _scratch_dir(folder: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as name:
        yield Path(name)


def export_fp32(model_dir: Path, target: Path) -> None:
    """Export the transformer with mean pooling and L2 normalization to ``target`` (one output, ``embedding``)."""
    import torch
    from transformers import AutoModel

    from ragkit.connectors.huggingface import quiet_progress_bars

    with quiet_progress_bars():
        # eager attention: a plain MatMul/Softmax graph that ONNX Runtime fuses (SDPA's export adds mask and NaN ops)
        encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    encoder.eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)

    ids = torch.ones((2, 8), dtype=torch.int64)
    sample = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on tracing, not the user's concern
        torch.onnx.export(
            Pooled(), sample, str(target), input_names=list(INPUTS), output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}}, opset_version=OPSET, dynamo=False,
        )


def fuse_transformer(model_dir: Path, source: Path, target: Path) -> None:
    """ONNX Runtime's transformer optimizer on the exported BERT graph: each layer's attention becomes one
    ``Attention`` operator, residual + layer norm ``SkipLayerNormalization``, the embeddings
    ``EmbedLayerNormalization``. The vectors agree with the plain graph's to a cosine of 0.9999994; one query's
    forward took 6.5-6.8 ms against 7.5-7.9 ms (p50, 2 cores), batches the same time."""
    import logging

    from onnxruntime.transformers import optimizer

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    log = logging.getLogger("onnxruntime.transformers")
    level = log.level
    log.setLevel(logging.ERROR)  # the optimizer logs each fusion it makes
    try:
        model = optimizer.optimize_model(
            str(source), model_type="bert", num_heads=int(config.get("num_attention_heads", 0)),
            hidden_size=int(config.get("hidden_size", 0)), opt_level=0, use_gpu=False,
        )
        model.save_model_to_file(str(target))
    finally:
        log.setLevel(level)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the MatMul weights (activations quantized per batch at run time)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8, per_channel=True)
    finally:
        root.setLevel(level)


def session_options(threads: int | None = None) -> onnxruntime.SessionOptions:
    """Sequential execution, all graph optimizations, ``threads`` intra-op threads (None: this process's cores)
    that sleep when idle."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or process_cores()
    options.inter_op_num_threads = 1
    # Idle intra-op threads sleep instead of spinning: a query's exact vector scan runs next, on numpy's own
    # threads, and spinning ORT threads held both cores through it (an embedded query, then a numpy scan of 100k
    # x 384 vectors on 2 cores: 15.1 ms with spinning, 8.3 ms without; batch embedding unchanged, 37-38
    # passages/s either way; docs/benchmarks.md, "The default mode's latency")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OnnxEmbedder:
    """Normalized float32 embeddings from a sentence-transformers model run by ONNX Runtime on the CPU.

    ``precision`` is ``"fp32"`` (the torch model's vectors to ~1e-6) or ``"int8"`` (dynamically quantized
    weights). ``threads``: ONNX Runtime's intra-op threads (None: every core this process may use).
    ``cache_dir``: where the exported model is kept (None: :func:`onnx_cache_dir`). Texts are run longest first
    in batches of at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens (:data:`MAX_BATCH_TOKENS`).

    >>> embedder = OnnxEmbedder("all-MiniLM-L6-v2", precision="int8")                    # doctest: +SKIP
    >>> embedder.embed_query("who wrote it?").shape                                       # doctest: +SKIP
    (384,)
    """

    backend = "onnx"
    name_suffixes = NAME_SUFFIXES  # precision -> the name's encoder suffix

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        precision: str = "fp32",
        device: str = "auto",
        batch_size: int | None = None,
        threads: int | None = None,
        cache_dir: Path | None = None,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> None:
        self._require_runtime()
        import tokenizers

        if precision not in self.name_suffixes:
            valid = ", ".join(self.name_suffixes)
            raise ValueError(f"{self.backend} embedder precision must be one of {valid} (got {precision!r})")
        if device not in ("auto", "cpu"):
            raise ValueError(
                f"the {self.backend} embedder runs on the CPU, not on device {device!r}; use the torch backend"
            )
        model_dir = Path(resolve_model(model))
        if not (model_dir / "config.json").is_file():
            raise OSError(
                f"embedder {model!r}: the {self.backend} backend needs a local model directory (got {model_dir})"
            )
        self.name = f"{model}{ENCODER_SEPARATOR}{self.name_suffixes[precision]}"  # what the manifest records
        self.model = model
        self.precision = precision
        self.device = "cpu"
        self.batch_size = batch_size or 32  # rows per run at most; fewer where they would pass max_batch_tokens
        self.max_batch_tokens = max_batch_tokens
        self.max_tokens = max_sequence_length(model_dir)
        self.model_path = exported_model(model_dir, self._export_of(precision), cache_dir)
        self._inputs: set[str] = set()
        self.dim = self._open(threads) or self._probe_dim()
        whole = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        whole.no_padding()
        whole.no_truncation()
        self._plain: tokenizers.Tokenizer = whole  # counts and offsets: no truncation, as chunking needs
        truncated = tokenizers.Tokenizer.from_str(whole.to_str())
        truncated.enable_truncation(self.max_tokens)
        self._truncated: tokenizers.Tokenizer = truncated
        self._ascii = AsciiWordPiece.of(truncated)  # a query's ids in Python: cold Rust costs 3x as much
        self._pad_id = whole.token_to_id("[PAD]") or 0

    def _require_runtime(self) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ImportError("the onnx embedder needs onnxruntime (pip install onnxruntime)") from exc

    def _export_of(self, precision: str) -> str:
        """Which cached graph (:data:`EXPORTS`) this runtime runs at ``precision``."""
        return precision

    def _open(self, threads: int | None) -> int | None:
        """Load :attr:`model_path` into the runtime, set :attr:`_inputs`; the output's width where the graph
        states it."""
        import onnxruntime

        self.session = onnxruntime.InferenceSession(
            str(self.model_path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}
        return int(self.session.get_outputs()[0].shape[-1] or 0) or None

    def _infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's one output (the normalized embeddings) for ``feeds``, an array this call owns."""
        (vectors,) = self.session.run(None, feeds)
        return np.asarray(vectors)

    def _probe_dim(self) -> int:
        return int(self._run(np.array([[0]], dtype=np.int64), np.array([1]))[0].shape[-1])

    @functools.cached_property
    def tokenizer(self) -> tokenizers.Tokenizer:
        """The model's Rust tokenizer (``tokenizers.Tokenizer``), without truncation or padding."""
        return self._plain

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the model's tokens (without special tokens), for token-window chunking."""
        return [(start, end) for start, end in self._plain.encode(_rust_safe(text), add_special_tokens=False).offsets]

    def token_offsets_batch(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """``token_offsets`` of each text, in one call of the Rust tokenizer (spread over the cores)."""
        encodings = self._plain.encode_batch([_rust_safe(t) for t in texts], add_special_tokens=False)
        return [[(start, end) for start, end in e.offsets] for e in encodings]

    def count_tokens(self, text: str) -> int:
        return len(self._plain.encode(_rust_safe(text), add_special_tokens=False).ids)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) == 1:
            return self.embed_queries(texts)
        encodings = self._truncated.encode_batch([_rust_safe(t) for t in texts])
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable")  # batches of similar lengths carry little padding
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        start = 0
        while start < len(order):
            width = int(lengths[order[start]])  # the longest row of the batch: rows are sorted longest first
            rows = order[start : start + max(1, min(self.batch_size, self.max_batch_tokens // width))]
            ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
            for slot, row in enumerate(rows):
                ids[slot, : lengths[row]] = encodings[row].ids
            out[rows] = self._run(ids, lengths[rows])
            start += len(rows)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        fast = self._ascii(text) if self._ascii is not None else None
        ids = np.array([fast if fast is not None else self._truncated.encode(_rust_safe(text)).ids], dtype=np.int64)
        return self._run(ids, np.array([ids.shape[1]]))[0]

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 1:
            return self.embed_query(texts[0])[None, :]
        return self.embed_documents(texts)

    def _run(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if len(ids) == 1 and lengths[0] == ids.shape[1]:  # one text (a query): no padding
            mask = np.ones_like(ids)
        else:
            mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        vectors = self._infer({k: v for k, v in feeds.items() if k in self._inputs})
        return np.ascontiguousarray(vectors, dtype=np.float32)
