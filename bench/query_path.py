"""Where one dense (or hybrid) query's time goes, next to the model's bare forward (issue 16, point 4).

    .venv/bin/python bench/query_path.py --stages [--dataset hotpotqa-train100] [--modes dense,hybrid]
        [--rounds 3] [--threads 1] [--index DIR] [--json FILE]

Builds a ragkit index of a BEIR folder of ../shared/data the way ``ragkit eval`` does (one chunk per passage, the
packaged all-MiniLM-L6-v2, graph off), or opens ``--index DIR`` (built by an earlier run with ``--keep``), then
asks every judged query ``--rounds`` times, one at a time, after 10 warm-up queries: ``index.retrieve(query, k=10,
mode=MODE)``, exactly as a user calls it.

Right after each query, the same query goes through the model alone, no ragkit: tokenized once by the model's own
``preprocess`` (untimed), then ``auto_model(**features)`` (the BERT encoder's forward under
``torch.inference_mode``, timed: **the bare forward**). The overhead of a query is its total minus that bare
forward; issue 16's target is under 1 ms. Percentiles of the overhead are taken per query (total minus its own
bare forward), not as a difference of percentiles; every other query runs its bare forward first, so neither
side always finds the weights warm in the cache. On a loaded machine two forwards of the same query differ by
milliseconds, so ``--stages`` also gives the time **outside the forward** in the same call (total minus the
``embed: forward`` stage), which that noise does not reach.

``--stages`` also splits each query into stages by wrapping methods of the open index's objects from here (no
ragkit code changes; each wrapper costs ~1 µs, so the totals with ``--stages`` are a little higher). Times are
exclusive: a stage's nested stages are subtracted from it.

- embed: tokenize: the Transformer module's ``preprocess`` (the Hugging Face tokenizer, tensors);
- embed: forward: the Transformer module's ``forward`` (the encoder's forward plus its output dict);
- embed: pooling, embed: normalize: the Pooling and Normalize modules;
- with the OpenVINO encoder (a CPU index's default) or ONNX Runtime's: embed: forward is the runtime's run
  (pooling and normalization are inside the exported graph), embed: tokenize and feeds the rest of
  ``embed_query``; the bare forward is the runtime's run on the same query's prepared inputs;
- embed: other: the rest of the embedder's ``embed_queries`` (sentence-transformers' ``encode`` bookkeeping, the
  normalization it repeats, the copy to numpy);
- store: up-to-date checks: ``IndexStore.vectors()`` / ``.bm25()`` (the catalog generation read);
- vector search: the vector backend's ``search`` (FAISS, merged top-k);
- catalog: every ``Catalog`` read (vector ids to chunk ids, chunk rows, sources);
- bm25 search, fusion (hybrid): ``BM25Index.search`` and ``reciprocal_rank_fusion``;
- rest: everything else (mode dispatch, settings reads, Hit and Chunk objects).

The load average is printed before and after each mode: on the shared 2-core machine, read close figures with
it in mind, and repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
K = 10
WARMUP = 10
TARGET_OVERHEAD_MS = 1.0


class ExclusiveStopwatch:
    """Exclusive time per label in wrapped methods: a wrapped call made inside another is taken out of it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[float] = []  # per open call: seconds spent in nested wrapped calls
        self._undo: list[Callable[[], None]] = []

    def wrap(self, obj: Any, method: str, label: str) -> None:
        inner = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(0.0)
            began = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent = time.perf_counter() - began
                nested = self._stack.pop()
                self.seconds[label] = self.seconds.get(label, 0.0) + spent - nested
                if self._stack:
                    self._stack[-1] += spent

        if isinstance(obj, type(sys)):  # a module's function: put the original back afterwards
            self._undo.append(lambda: setattr(obj, method, inner))
        else:
            self._undo.append(lambda: delattr(obj, method))
        setattr(obj, method, timed)

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def take(self) -> dict[str, float]:
        taken, self.seconds = self.seconds, {}
        return taken


def build_index(dataset_dir: Path, path: Path, backend: str = "auto", precision: str = "fp32") -> float:
    from ragkit import Index, Settings
    from ragkit.eval.datasets import load_beir

    embedder = {"device": "cpu", "backend": backend, "precision": precision}
    settings = Settings().merged(chunking={"strategy": "none"}, graph={"enabled": False}, embedder=embedder)
    began = time.perf_counter()
    with Index.create(path, settings) as index:
        report = index.add_documents(load_beir(dataset_dir).documents())
    if report.failed:
        raise RuntimeError(f"{report.failed} documents failed: {report.errors[:3]}")
    return time.perf_counter() - began


def wrap_stages(stopwatch: ExclusiveStopwatch, index: Any, mode: str) -> None:
    import ragkit.pipelines.retrievers as retrievers

    store = index.store
    embedder = store.embedder
    stopwatch.wrap(embedder, "embed_queries", "embed: other")
    stopwatch.wrap(store, "embed_queries", "embed: other")
    single = store._parts.get("single-query")  # ragkit's lean path for one query (ragkit.store.embed_queries)
    if single is not None:
        stopwatch.wrap(single, "tokenize", "embed: tokenize")
        stopwatch.wrap(single, "forward", "embed: forward")
    if runtime_encoder(embedder):  # ONNX Runtime, OpenVINO: tokenizing is the rest of embed_query
        stopwatch.wrap(embedder, "embed_query", "embed: tokenize and feeds")
        stopwatch.wrap(embedder, "_run", "embed: forward")
    model = getattr(embedder, "model", None)
    if not runtime_encoder(embedder) and model is not None:  # a SentenceTransformer: its modules
        modules = list(model)
        stopwatch.wrap(modules[0], "preprocess", "embed: tokenize")
        stopwatch.wrap(modules[0], "forward", "embed: forward")
        for module in modules[1:]:
            name = type(module).__name__.lower()
            stopwatch.wrap(module, "forward", f"embed: {'pooling' if name == 'pooling' else name}")
    vectors = store.vectors()
    stopwatch.wrap(store, "vectors", "store: up-to-date checks")
    if hasattr(store, "vectors_as_checked"):  # dense reads the generation with its hits (since 2026-12-06)
        stopwatch.wrap(store, "vectors_as_checked", "store: up-to-date checks")
    stopwatch.wrap(vectors, "search", "vector search")
    catalog = store.catalog
    for name in dir(type(catalog)):
        if not name.startswith("_") and callable(getattr(type(catalog), name, None)) and name not in (
            "transaction", "close", "put_document", "delete_documents", "set_state"
        ):
            stopwatch.wrap(catalog, name, "catalog")
    if mode == "hybrid":
        stopwatch.wrap(store, "bm25", "store: up-to-date checks")
        stopwatch.wrap(store.bm25(), "search", "bm25 search")
        stopwatch.wrap(retrievers, "reciprocal_rank_fusion", "fusion")


def runtime_encoder(embedder: Any) -> bool:
    """Whether ``embedder`` is ragkit's ONNX Runtime or OpenVINO encoder (the exported graph)."""
    from ragkit.connectors.embedders import RUNTIMES

    return getattr(embedder, "backend", "") in RUNTIMES


def bare_forward(model: Any, text: str) -> float:
    """Seconds of the encoder's forward alone on ``text``, tokenized by the model's own preprocess beforehand.
    For ONNX Runtime and OpenVINO (``model`` is then ragkit's ``OnnxEmbedder`` or ``OpenVinoEmbedder``): the
    runtime's run on the prepared inputs, which includes the pooling and normalization the exported graph holds."""
    if runtime_encoder(model):
        import numpy as np

        ids = np.array([model._truncated.encode(text).ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds = {key: value for key, value in feeds.items() if key in model._inputs}
        began = time.perf_counter()
        model._infer(feeds)
        return time.perf_counter() - began
    import torch

    features = model.preprocess([text])
    encoder = model[0].auto_model
    wanted = {"input_ids", "attention_mask", "token_type_ids"}
    inputs = {key: value for key, value in features.items() if key in wanted}
    with torch.inference_mode():
        began = time.perf_counter()
        encoder(**inputs)
        return time.perf_counter() - began


def with_threads(embedder: Any, threads: int) -> None:
    """Load the runtime encoder's graph again with ``threads`` threads (ragkit gives it every core)."""
    embedder._open(threads)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure(index: Any, queries: Sequence[str], mode: str, rounds: int, stages: bool) -> dict[str, Any]:
    model = index.embedder if runtime_encoder(index.embedder) else index.embedder.model
    for text in queries[:WARMUP]:
        index.retrieve(text, k=K, mode=mode)
        bare_forward(model, text)
    stopwatch = ExclusiveStopwatch()
    if stages:
        wrap_stages(stopwatch, index, mode)
    rows: list[dict[str, float]] = []
    load_before = os.getloadavg()
    try:
        for _ in range(rounds):
            for number, text in enumerate(queries):
                bare = bare_forward(model, text) if number % 2 else None  # every other query: the bare one first
                stopwatch.take()
                began = time.perf_counter()
                index.retrieve(text, k=K, mode=mode)
                total = time.perf_counter() - began
                row = stopwatch.take()
                if stages:
                    row["rest (dispatch, settings, hits)"] = total - sum(row.values())
                row["total"] = total
                row["bare forward"] = bare_forward(model, text) if bare is None else bare
                row["overhead (total - bare forward)"] = total - row["bare forward"]
                if stages:
                    row["outside the forward (total - embed: forward)"] = total - row.get("embed: forward", 0.0)
                rows.append(row)
    finally:
        stopwatch.restore()
    labels = list(dict.fromkeys(label for row in rows for label in row))
    table = {
        label: {
            "p50_ms": percentile([row.get(label, 0.0) for row in rows], 50) * 1000.0,
            "p99_ms": percentile([row.get(label, 0.0) for row in rows], 99) * 1000.0,
            "mean_ms": statistics.fmean(row.get(label, 0.0) for row in rows) * 1000.0,
        }
        for label in labels
    }
    return {"queries": len(rows), "stages": table, "load_before": load_before, "load_after": os.getloadavg()}


def format_mode(mode: str, result: dict[str, Any]) -> str:
    lines = [
        f"### {mode}: {result['queries']} queries, load average {result['load_before'][0]:.2f} before, "
        f"{result['load_after'][0]:.2f} after",
        "",
        "| stage | p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|",
    ]
    for label, figures in result["stages"].items():
        bold = "**" if label.startswith(("total", "bare", "overhead", "outside")) else ""
        lines.append(f"| {bold}{label}{bold} | {figures['p50_ms']:.3f} | {figures['p99_ms']:.3f} | "
                     f"{figures['mean_ms']:.3f} |")
    for label in ("overhead (total - bare forward)", "outside the forward (total - embed: forward)"):
        if label in result["stages"]:
            value = result["stages"][label]["p50_ms"]
            met = "met" if value < TARGET_OVERHEAD_MS else "**missed**"
            lines += ["", f"{label}: p50 {value:.3f} ms against the target < {TARGET_OVERHEAD_MS:.0f} ms: {met}"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="hotpotqa-train100", help="a BEIR folder of --data")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--modes", default="dense,hybrid", help="comma-separated retrieval modes")
    parser.add_argument("--rounds", type=int, default=3, help="times every judged query is asked")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP/MKL/OpenBLAS threads, and the encoder's (torch or ONNX Runtime; default 1)")
    parser.add_argument("--stages", action="store_true", help="split each query into its stages")
    parser.add_argument("--backend", default="auto", help="embedder backend of a new index (auto, onnx, openvino...)")
    parser.add_argument("--precision", default="fp32", help="embedder precision of a new index (fp32, int8, bf16)")
    parser.add_argument("--index", type=Path, help="an index built by an earlier run (--keep) instead of a new one")
    parser.add_argument("--keep", type=Path, help="build the index here and keep it")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(args.threads)  # before numpy's and torch's thread pools start
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    from ragkit import Index, Settings
    from ragkit.eval.datasets import load_beir
    from ragkit.eval.metrics import relevant_count

    dataset = load_beir(args.data / args.dataset)
    queries = [text for qid, text in dataset.queries.items() if relevant_count(dataset.qrels.get(qid, {}))]
    date = time.strftime("%Y-%m-%d %H:%M")
    print(f"# {' '.join(['bench/query_path.py', *sys.argv[1:]])}\n# {date}, {os.cpu_count()} CPUs, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.2f}", flush=True)
    work = None
    path = args.index
    if path is None:
        path = args.keep or Path(tempfile.mkdtemp(prefix="query-path-")) / "index"
        work = None if args.keep else path.parent
        print(f"indexing {args.dataset} ({dataset.passages} passages) ...", flush=True)
        seconds = build_index(args.data / args.dataset, path, args.backend, args.precision)
        print(f"indexed in {seconds:.1f} s", flush=True)
    report: dict[str, Any] = {"date": date, "command": " ".join(sys.argv), "dataset": args.dataset,
                              "threads": args.threads, "modes": {}}
    settings = Settings().merged(embedder={"device": "cpu"})
    try:
        with Index.open(path, settings) as index:
            if runtime_encoder(index.embedder):
                with_threads(index.embedder, args.threads)
            else:  # PyTorch only for a torch index: once loaded, it would also run the scan (ragkit.linalg)
                import torch

                torch.set_num_threads(args.threads)
            print(f"encoder: {index.embedder.name}", flush=True)
            for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
                result = measure(index, queries, mode, args.rounds, args.stages)
                report["modes"][mode] = result
                print("\n" + format_mode(mode, result), flush=True)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
