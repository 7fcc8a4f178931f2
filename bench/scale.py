"""FAISS backends at scale: build time, resident memory, latency, throughput and recall@10 on N synthetic vectors.

    .venv/bin/python bench/scale.py N [--kinds flat,hnsw,ivfpq] [--shards 1,4] [--where] [--markdown FILE]

Issue "Vector backends ... 1M-chunk scale". Targets at N = 1,000,000 on a 2-core machine: resident memory
<= 2 GB, single-query p50 <= 20 ms, recall@10 >= 0.95 (against exact inner-product search).

Data (384-d, unit length, clustered like sentence embeddings): each document of 8 chunks belongs to one of
--topics random topic directions; a chunk is topic + document offset + chunk noise, where both noise terms have a
power-law spectrum in a random basis (embedding variance concentrates in a few directions), then normalised. The
mixing weights were picked so that the statistics printed under "data" (similarity to the nearest neighbour, to the
10th, to a random vector) look like those of all-MiniLM-L6-v2 on SciFact. Queries are drawn the same way (fresh
documents on the same topics) and are not in the index.

Every configuration is built in a fresh subprocess, so a flat baseline never inflates another one's memory. That
process generates its vectors 10k at a time and adds them in --batch rows, with metadata {"doc_id": "d<i//8>",
"tenant": "t<doc % 3>"}; build time is the time of all add() calls plus save() (not the data generation), and
"sqlite s" is the part of it spent in the metadata sidecar's SQL calls. RSS is VmRSS of that process after save();
peak is VmHWM. Latency: --queries single queries, one at a time (after 10 warm-up queries); throughput: --batch-queries
queries in batches of --query-batch; recall@10 over the first --recall-queries single queries, against exact top-10
computed with numpy over all N vectors. --where adds a filtered search, where={"tenant": "t0"} (1/3 of vectors),
with its own exact top-10.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384
BLOCK = 10_000  # vectors are generated in blocks of this size, each from its own seed: any process gets the same data
CHUNKS_PER_DOC = 8
TENANTS = 3
K = 10
TARGET_RSS_GB = 2.0
TARGET_P50_MS = 20.0
TARGET_RECALL = 0.95


# ----------------------------------------------------------------------------------------------------- data


class Synthetic:
    """Deterministic clustered unit vectors: stream 0 is the corpus, stream 1 the queries."""

    def __init__(
        self, topics: int, seed: int, doc_noise: float, chunk_noise: float, decay: float, common: float
    ) -> None:
        rng = np.random.default_rng([seed, 0])
        mean = self._unit(rng.standard_normal((1, DIM), dtype=np.float32))
        # a direction shared by all vectors: sentence embeddings are anisotropic (random pairs have cosine ~0.1)
        self.topics = self._unit(rng.standard_normal((topics, DIM), dtype=np.float32))
        self.topics = self._unit(self.topics + common * mean)
        basis, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
        spectrum = np.arange(1, DIM + 1, dtype=np.float64) ** -decay
        spectrum /= np.sqrt((spectrum**2).sum())  # a noise draw has expected squared norm 1
        self.noise_map = (spectrum[:, None] * basis.T).astype(np.float32)
        self.seed, self.doc_noise, self.chunk_noise = seed, doc_noise, chunk_noise

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def _block(self, stream: int, number: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1 + stream, number])
        docs = BLOCK // CHUNKS_PER_DOC
        topic = rng.integers(0, len(self.topics), docs)
        doc_offset = rng.standard_normal((docs, DIM), dtype=np.float32) @ self.noise_map
        centre = self.topics[topic] + self.doc_noise * doc_offset
        chunk = rng.standard_normal((BLOCK, DIM), dtype=np.float32) @ self.noise_map
        out = np.repeat(centre, CHUNKS_PER_DOC, axis=0)
        out += self.chunk_noise * chunk
        return self._unit(out)

    def vectors(self, lo: int, hi: int, stream: int = 0) -> np.ndarray:
        first, last = lo // BLOCK, (hi - 1) // BLOCK
        parts = [self._block(stream, b) for b in range(first, last + 1)]
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return np.ascontiguousarray(data[lo - first * BLOCK : hi - first * BLOCK])

    def queries(self, count: int) -> np.ndarray:
        # one query per document, so queries are spread over topics like the corpus
        rows = np.arange(count) * CHUNKS_PER_DOC
        return np.ascontiguousarray(self.vectors(0, int(rows[-1]) + 1, stream=1)[rows])


def tenant_of(ids: np.ndarray) -> np.ndarray:
    return (ids // CHUNKS_PER_DOC) % TENANTS


def meta_rows(lo: int, hi: int) -> list[dict[str, str]]:
    return [
        {"doc_id": f"d{i // CHUNKS_PER_DOC}", "tenant": f"t{(i // CHUNKS_PER_DOC) % TENANTS}"} for i in range(lo, hi)
    ]


def exact_topk(data: Synthetic, n: int, queries: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """Exact top-K by inner product over all n vectors (and over tenant t0 only), streaming the corpus."""
    best_s = np.full((len(queries), K), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), K), -1, dtype=np.int64)
    where_s, where_i = best_s.copy(), best_i.copy()
    random_sims = []
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        ids = np.arange(lo, hi, dtype=np.int64)
        sims = queries @ data.vectors(lo, hi).T
        random_sims.append(sims[:, :: max(1, (hi - lo) // 50)].ravel())
        for scores, found, mask in ((best_s, best_i, None), (where_s, where_i, tenant_of(ids) == 0)):
            s, i = (sims, ids) if mask is None else (sims[:, mask], ids[mask])
            all_s, all_i = np.hstack([scores, s]), np.hstack([found, np.broadcast_to(i, s.shape)])
            top = np.argpartition(-all_s, K - 1, axis=1)[:, :K]
            scores[:], found[:] = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    order = np.argsort(-best_s, axis=1)
    best_s = np.take_along_axis(best_s, order, 1)
    return {
        "ids": best_i,
        "where_ids": where_i,
        "top1": best_s[:, 0],
        "top10": best_s[:, K - 1],
        "random": np.concatenate(random_sims),
    }


# ----------------------------------------------------------------------------------------------------- child


def proc_status() -> dict[str, float]:
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024**2  # kB -> GB
    return values


class TimedConnection:
    """Wraps the index's sqlite3 connection to add up the time spent in its SQL calls."""

    def __init__(self, conn: Any) -> None:
        self._conn, self.seconds = conn, 0.0

    def _timed(self, method: str, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return getattr(self._conn, method)(*args)
        finally:
            self.seconds += time.perf_counter() - started

    def execute(self, *args: Any) -> Any:
        return self._timed("execute", *args)

    def executemany(self, *args: Any) -> Any:
        return self._timed("executemany", *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def search_settings(kind: str, args: argparse.Namespace) -> list[dict[str, int]]:
    if kind == "hnsw":
        return [{"ef_search": ef} for ef in ints(args.ef_search)]
    if kind == "ivfpq":
        return [{"nprobe": p} for p in ints(args.nprobe)]
    return [{}]


def options_for(kind: str, shards: int, n: int, args: argparse.Namespace) -> dict[str, int]:
    if kind == "hnsw":
        return {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": ints(args.ef_search)[0]}
    if kind == "ivfpq":
        per_shard = n / shards
        nlist = args.nlist or max(64, 2 ** round(math.log2(4 * math.sqrt(per_shard))))
        train = args.train_size or min(int(per_shard * 0.8), max(10_000, args.train_per_list * nlist))
        return {
            "nlist": nlist,
            "nprobe": ints(args.nprobe)[0],
            "pq_m": args.pq_m,
            "train_size": train,
            "refine_factor": args.refine_factor,
        }
    return {}


def run_child(spec: dict[str, Any]) -> list[dict[str, Any]]:
    import faiss

    from ragkit.connectors.vectors.faiss import FaissShardedIndex

    n, kind, shards, batch = spec["n"], spec["kind"], spec["shards"], spec["batch"]
    data = Synthetic(**spec["data"])
    truth = np.load(spec["truth"])
    queries = data.queries(spec["query_count"])
    directory = Path(spec["directory"])
    base = proc_status()["VmRSS"]

    index = FaissShardedIndex(directory, DIM, shards=shards, kind=kind, **spec["options"])
    timed = TimedConnection(index._meta)
    index._meta = timed  # type: ignore[assignment]
    build_s = gen_s = 0.0
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        started = time.perf_counter()
        vectors, ids, meta = data.vectors(lo, hi), np.arange(lo, hi, dtype=np.int64), meta_rows(lo, hi)
        gen_s += time.perf_counter() - started
        started = time.perf_counter()
        index.add(ids, vectors, meta)
        build_s += time.perf_counter() - started
        del vectors, meta
    started = time.perf_counter()
    index.save()
    save_s = time.perf_counter() - started
    build_s += save_s
    after_build = proc_status()
    disk = sum(f.stat().st_size for f in directory.iterdir())

    common = {
        "kind": kind,
        "shards": shards,
        "build_s": build_s,
        "save_s": save_s,
        "sqlite_s": timed.seconds,
        "gen_s": gen_s,
        "rss_gb": after_build["VmRSS"],
        "peak_gb": after_build["VmHWM"],
        "base_rss_gb": base,
        "disk_gb": disk / 1024**3,
        "omp_threads": faiss.omp_get_max_threads(),
    }
    warm = data.queries(spec["query_count"] + 10)[-10:]
    results = []
    for setting in spec["search_settings"]:  # search-time options (efSearch, nprobe) measured on the same build
        for shard in index._shards:
            shard.options = {**shard.options, **setting}
        load_start = os.getloadavg()[0]
        for q in warm:
            index.search(q[None], K)
        latencies, found = [], []
        for q in queries[: spec["queries"]]:
            started = time.perf_counter()
            _, ids = index.search(q[None], K)
            latencies.append(time.perf_counter() - started)
            found.append(ids[0])
        recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth["ids"], strict=False)]))

        many = queries[: spec["batch_queries"]]
        started = time.perf_counter()
        for lo in range(0, len(many), spec["query_batch"]):
            index.search(many[lo : lo + spec["query_batch"]], K)
        qps = len(many) / (time.perf_counter() - started)

        result: dict[str, Any] = {
            **common,
            "options": {**spec["options"], **setting},
            "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3),
            "qps": qps,
            "recall": recall,
        }
        if spec["where"]:
            where = {"tenant": "t0"}
            latencies, found = [], []
            for q in queries[: spec["where_queries"]]:
                started = time.perf_counter()
                _, ids = index.search(q[None], K, where=where)
                latencies.append(time.perf_counter() - started)
                found.append(ids[0])
            result["where_p50_ms"] = float(np.percentile(latencies, 50) * 1e3)
            result["where_p99_ms"] = float(np.percentile(latencies, 99) * 1e3)
            result["where_recall"] = float(
                np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth["where_ids"], strict=False)])
            )
            result["where_ok"] = bool(all(tenant_of(f[f >= 0]).max(initial=0) == 0 for f in found))
        result["rss_end_gb"] = proc_status()["VmRSS"]
        result["load"] = [load_start, os.getloadavg()[0]]
        results.append(result)
    index.close()
    return results


# ----------------------------------------------------------------------------------------------------- parent


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def describe(r: dict[str, Any]) -> str:
    o = r["options"]
    if r["kind"] == "hnsw":
        return f"M={o['hnsw_m']} efC={o['ef_construction']} efS={o['ef_search']}"
    if r["kind"] == "ivfpq":
        return (
            f"nlist={o['nlist']} nprobe={o['nprobe']} PQ{o['pq_m']} train={o['train_size']:,} "
            f"refine×{o['refine_factor']}"
        )
    return "exact"


def table(results: list[dict[str, Any]], where: bool) -> list[str]:
    head = (
        "| kind | shards | options | build s | sqlite s | RSS GB (≤ 2) | peak GB | p50 ms (≤ 20) | p99 ms "
        "| batch q/s | recall@10 (≥ 0.95) | load |"
    )
    rule = "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if where:
        head += " filtered p50 ms | filtered recall@10 |"
        rule += "---:|---:|"
    lines = [head, rule]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['shards']} | {r['error']} |")
            continue
        line = (
            f"| {r['kind']} | {r['shards']} | {describe(r)} | {r['build_s']:.1f} | {r['sqlite_s']:.1f} "
            f"| {r['rss_gb']:.2f} {mark(r['rss_gb'] <= TARGET_RSS_GB)} | {r['peak_gb']:.2f} "
            f"| {r['p50_ms']:.2f} {mark(r['p50_ms'] <= TARGET_P50_MS)} | {r['p99_ms']:.2f} | {r['qps']:,.0f} "
            f"| {r['recall']:.3f} {mark(r['recall'] >= TARGET_RECALL)} | {r['load'][0]:.1f}→{r['load'][1]:.1f} |"
        )
        if where:
            line += f" {r['where_p50_ms']:.1f} | {r['where_recall']:.3f} |"
        lines.append(line)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, nargs="?", help="number of vectors")
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    parser.add_argument("--shards", default="1,4")
    parser.add_argument("--batch", type=int, default=50_000, help="vectors per add() call (multiple of 10,000)")
    parser.add_argument("--queries", type=int, default=200, help="single queries timed one at a time")
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--batch-queries", type=int, default=1000)
    parser.add_argument("--query-batch", type=int, default=100)
    parser.add_argument("--where", action="store_true", help="also time a filtered search (1/3 of vectors)")
    parser.add_argument("--where-queries", type=int, default=50)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", default="768", help="comma list: each is measured on the same build")
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists per shard (0: 4*sqrt(vectors per shard))")
    parser.add_argument("--nprobe", default="32", help="comma list: each is measured on the same build")
    parser.add_argument("--pq-m", type=int, default=48)
    parser.add_argument("--train-size", type=int, default=0, help="vectors per shard to train IVF-PQ on (0: auto)")
    parser.add_argument("--train-per-list", type=int, default=24, help="auto train size: this many per IVF list")
    parser.add_argument("--refine-factor", type=int, default=4)
    parser.add_argument("--topics", type=int, default=4096)
    parser.add_argument("--doc-noise", type=float, default=0.9)
    parser.add_argument("--chunk-noise", type=float, default=0.6)
    parser.add_argument("--decay", type=float, default=0.5, help="power-law exponent of the noise spectrum")
    parser.add_argument("--common", type=float, default=0.5, help="weight of the direction all vectors share")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="where indexes are built (default: a temp dir)")
    parser.add_argument("--markdown", type=Path, default=None, help="append the results table to this file")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print("RESULT " + json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0
    if not args.n or args.batch % BLOCK:
        parser.error("give N, and a --batch that is a multiple of 10,000")

    data_spec = {
        "topics": args.topics,
        "seed": args.seed,
        "doc_noise": args.doc_noise,
        "chunk_noise": args.chunk_noise,
        "decay": args.decay,
        "common": args.common,
    }
    data = Synthetic(**data_spec)
    query_count = max(args.queries, args.batch_queries, args.recall_queries, args.where_queries)
    command = "bench/scale.py " + " ".join(sys.argv[1:])
    print(f"$ {command}")
    print(
        f"{datetime.date.today()}  {platform.node()}  {os.cpu_count()} cores  python {platform.python_version()}  "
        f"N={args.n:,} dim={DIM} k={K}"
    )

    scratch = Path(tempfile.mkdtemp(prefix="ragkit-scale-", dir=args.workdir))
    try:
        started = time.perf_counter()
        recall_q = data.queries(query_count)[: max(args.recall_queries, args.where_queries)]
        truth = exact_topk(data, args.n, recall_q, args.batch)
        truth_path = scratch / "truth.npz"
        np.savez(truth_path, ids=truth["ids"][: args.recall_queries], where_ids=truth["where_ids"])
        print(
            f"data: {args.topics} topics, exact top-{K} of {len(recall_q)} queries "
            f"in {time.perf_counter() - started:.0f} s; "
            f"cosine to nearest {np.mean(truth['top1']):.3f}, to 10th {np.mean(truth['top10']):.3f}, "
            f"to a random vector {np.mean(truth['random']):.3f} (± {np.std(truth['random']):.3f})"
        )
        results = []
        for kind in args.kinds.split(","):
            for shards in [int(s) for s in args.shards.split(",")]:
                spec = {
                    "n": args.n,
                    "kind": kind,
                    "shards": shards,
                    "batch": args.batch,
                    "data": data_spec,
                    "truth": str(truth_path),
                    "query_count": query_count,
                    "queries": args.queries,
                    "recall_queries": args.recall_queries,
                    "batch_queries": args.batch_queries,
                    "query_batch": args.query_batch,
                    "where": args.where,
                    "where_queries": args.where_queries,
                    "options": options_for(kind, shards, args.n, args),
                    "search_settings": search_settings(kind, args),
                    "directory": str(scratch / f"{kind}-{shards}"),
                }
                started = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
                )
                wall = time.perf_counter() - started
                shutil.rmtree(spec["directory"], ignore_errors=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode or not lines:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                    result = {"kind": kind, "shards": shards, "error": f"failed (rc {proc.returncode}): {tail[0]}"}
                    print(f"{kind} x{shards}: {result['error']}", file=sys.stderr)
                else:
                    for result in json.loads(lines[-1][len("RESULT ") :]):
                        result["wall_s"] = wall
                        print(
                            f"{kind:5} x{shards}: build {result['build_s']:7.1f} s (sqlite {result['sqlite_s']:.1f} s, "
                            f"save {result['save_s']:.1f} s)  RSS {result['rss_gb']:.2f} GB "
                            f"(peak {result['peak_gb']:.2f})  p50 {result['p50_ms']:.2f} ms  "
                            f"p99 {result['p99_ms']:.2f} ms  "
                            f"{result['qps']:,.0f} q/s  recall@10 {result['recall']:.3f}"
                            + (
                                f"  filtered p50 {result['where_p50_ms']:.1f} ms recall {result['where_recall']:.3f}"
                                if args.where
                                else ""
                            )
                            + f"  [{describe(result)}; load {result['load'][0]:.1f}→{result['load'][1]:.1f}]",
                            flush=True,
                        )
                        results.append(result)
                    print(f"{kind:5} x{shards}: wall {wall:.0f} s", flush=True)
                    continue
                results.append(result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    lines = table(results, args.where)
    print()
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.markdown:
        with args.markdown.open("a") as handle:
            handle.write(
                f"\n```\n$ .venv/bin/python {command}\n```\n\n{datetime.date.today()}, {os.cpu_count()} CPU cores, "
                f"N = {args.n:,} vectors of dimension {DIM}.\n\n" + "\n".join(lines) + "\n"
            )
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
