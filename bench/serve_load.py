"""``ragkit serve`` under load: closed-loop HTTP clients against the in-process ``retrieve_many`` ceiling.

    .venv/bin/python bench/serve_load.py [--corpus DIR] [--queries FILE] [--clients 200] [--seconds 20]
                                         [--warmup 3] [--scenarios retrieve-dense retrieve-hybrid ask chat]
                                         [--client-procs 4] [--max-batch N] [--max-wait-ms MS] [--graph]
                                         [--quick] [--json FILE]

Builds (or reuses: the cache is keyed by the corpus's files and the index settings) an index of CORPUS, by
default ../shared/data/hotpotqa-train100 (a BEIR folder: its queries drive the load; any other folder of files
works too, with --queries or questions cut from its own chunks). Then, on this machine:

1. ``ragkit serve`` as a child process on a free loopback port (keyless, a ragkit.toml beside the index with
   ``generator.name = "extractive"``), used once ``/readyz`` says ready;
2. per scenario, ``--clients`` concurrent clients (httpx.AsyncClient, one connection pool per client process,
   sized to its clients), each sending its next request as soon as the previous one returns, cycling through the
   queries, for --warmup then --seconds: requests/s, p50/p90/p99, errors by kind (non-2xx statuses and transport
   errors, warm-up included), the server's mean batch and its own p50/p99 read from ``/metrics`` over the
   measured window, and the CPU the server, the clients and every other process used in it;
3. around each retrieve scenario, while the server idles, the ceiling: ``Index.retrieve_many`` in process, in
   batches of the server's ``serve.max_batch``, queries/s and CPU per query, before and after (their mean is
   the ceiling).

Targets (issue 14, "Under load"): 0 errors at 200 concurrent clients; retrieve throughput >= 0.7 x the
in-process batched ceiling; p99 printed next to p50. The clients run on the same machine as the server and take
CPU from it (the ceiling runs alone), so the ratio is a lower bound. They run in 4 processes by default: one
httpx pool of 200 connections costs the client 12-13 ms of CPU per request, two thirds of what the server spends
(httpcore scans the whole pool on every request, encode/httpx#3215), and on 2 cores such a client cannot keep 200
requests waiting at the server (its batches fell from 32 to 9); pools of 50 cost 3 ms. The script says so when a
client shows that cost.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CORPUS = DATA / "hotpotqa-train100"
LOOPBACK = "127.0.0.1"
TARGET_RATIO = 0.7  # retrieve throughput / in-process batched ceiling
TARGET_CLIENTS = 200  # "200 concurrent clients with 0 errors"
EXIT_DATA = 2


@dataclass(frozen=True)
class Scenario:
    """One kind of request the clients send; ``mode`` names the retrieval mode whose ceiling it is compared to."""

    name: str
    method: str
    path: str
    body: Callable[[str, int], dict[str, Any] | None]
    mode: str | None = None


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("retrieve-dense", "POST", "/v1/retrieve", lambda q, k: {"query": q, "k": k, "mode": "dense"},
                 "dense"),
        Scenario("retrieve-hybrid", "POST", "/v1/retrieve", lambda q, k: {"query": q, "k": k, "mode": "hybrid"},
                 "hybrid"),
        Scenario("ask", "POST", "/v1/ask", lambda q, k: {"question": q}),
        Scenario("chat", "POST", "/v1/chat/completions",
                 lambda q, k: {"model": "ragkit", "messages": [{"role": "user", "content": q}]}),
        # no index work: what the load generator and the HTTP stack alone can do on this machine
        Scenario("healthz", "GET", "/healthz", lambda q, k: None),
    )
}
DEFAULT_SCENARIOS = ["retrieve-dense", "retrieve-hybrid", "ask", "chat"]


# -- the corpus and its index ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """What to index (a BEIR corpus file or a folder), how to chunk it, and the queries that drive the load."""

    name: str
    source: Path
    strategy: str  # chunking: a BEIR passage is one chunk, as `ragkit eval` indexes it
    queries: list[str]


def read_corpus(path: Path, queries_file: Path | None) -> Corpus:
    """A BEIR folder (corpus.jsonl + queries.jsonl) or any folder of files; SystemExit(2) when it is absent."""
    if not path.exists():
        print(
            f"serve_load: no corpus at {path}. Pass --corpus with a BEIR folder (corpus.jsonl, queries.jsonl) or a "
            f"folder of files; the shared data sets live in {DATA} (see its README.md)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_DATA)
    beir = path.is_dir() and (path / "corpus.jsonl").is_file()
    queries = read_queries(queries_file or (path / "queries.jsonl" if beir else None))
    if beir:
        return Corpus(path.name, path / "corpus.jsonl", "none", queries)
    return Corpus(path.name, path, "auto", queries)


def read_queries(path: Path | None) -> list[str]:
    """Queries from a JSONL file (a ``text`` field per line, as BEIR's queries.jsonl) or a text file (one a line)."""
    if path is None:
        return []
    if not path.is_file():
        print(f"serve_load: no queries file at {path}", file=sys.stderr)
        raise SystemExit(EXIT_DATA)
    queries = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if not line:
            continue
        if path.suffix == ".jsonl":
            try:
                text = json.loads(line).get("text", "")
            except (json.JSONDecodeError, AttributeError):
                print(f"serve_load: {path}: a line is not a JSON object with a 'text' field: {line[:80]!r}",
                      file=sys.stderr)
                raise SystemExit(EXIT_DATA) from None
            line = text.strip() if isinstance(text, str) else ""
        if line:
            queries.append(line)
    if not queries:
        print(f"serve_load: {path} holds no queries", file=sys.stderr)
        raise SystemExit(EXIT_DATA)
    return queries


def corpus_key(corpus: Corpus, graph: bool, model: str) -> str:
    """Same files (path, size, mtime) and settings, same key: the cached index is reused."""
    files = [corpus.source] if corpus.source.is_file() else sorted(p for p in corpus.source.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(json.dumps([corpus.strategy, graph, model]).encode())
    return f"{corpus.name}-{digest.hexdigest()[:12]}"


def cache_root() -> Path:
    base = os.environ.get("RAGKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ragkit"
    )
    return Path(base) / "bench-serve"


def write_config(path: Path, corpus: Corpus, args: argparse.Namespace) -> Path:
    """The ragkit.toml the server and the ceiling both read (the server gets it with --config)."""
    lines = [
        "[generator]", 'name = "extractive"',
        "[chunking]", f'strategy = "{corpus.strategy}"',
        "[graph]", f"enabled = {'true' if args.graph else 'false'}",
        "[retrieval]", f"k = {args.k}",
        "[serve]",
    ]
    if args.max_batch is not None:
        lines.append(f"max_batch = {args.max_batch}")
    if args.max_wait_ms is not None:
        lines.append(f"max_wait_ms = {args.max_wait_ms}")
    path.write_text("\n".join(lines) + "\n")
    return path


def build_index(directory: Path, corpus: Corpus, settings: Any) -> tuple[dict[str, Any], list[str]]:
    """Create the index (or bring the cached one up to date: unchanged documents are skipped). Returns what it
    holds and the queries: the corpus's own, else (a folder of files without --queries) cut from its chunks."""
    from ragkit import Index

    started = time.perf_counter()
    with Index.create(directory, settings, exist_ok=True) as index:
        report = index.add([corpus.source])
        counts = index.catalog.counts()
        queries = corpus.queries or queries_from_chunks(index)
    figures = {**counts, "added": report.added, "unchanged": report.unchanged, "failed": report.failed,
               "seconds": round(time.perf_counter() - started, 1)}
    return figures, queries


def queries_from_chunks(index: Any, limit: int = 200) -> list[str]:
    """The first dozen words of the first sentence of up to ``limit`` chunks (those that read as prose)."""
    queries: list[str] = []
    for batch in index.catalog.iter_chunks():
        for chunk in batch:
            words = re.split(r"(?<=[.!?])\s", chunk.text.strip(), maxsplit=1)[0].split()[:12]
            if len(words) >= 3 and sum(word.isalpha() for word in words) >= 0.7 * len(words):  # prose, not code
                queries.append(" ".join(words))
            if len(queries) >= limit:
                return queries
    return queries


# -- the in-process ceiling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """Queries per second, and the CPU time (every thread of the process) each query cost."""

    queries_per_s: float
    cpu_ms_per_query: float


class Ceiling:
    """``Index.retrieve_many`` in this process, in batches of the server's ``max_batch``: what the server could
    reach if HTTP, JSON and the batcher cost nothing. Measured right before and after each retrieve scenario, while
    the server idles, so that both see the machine in the same state (other processes share it).

    The calls run as the server runs them: the model warmed up on one thread, the batches on another (the
    server's warm-up and its batcher thread). That is not a detail on a busy machine: torch's OpenMP runtime
    spin-waits between parallel regions until more of its threads exist than cores, then throttles the spinning;
    with one team the same batches cost about twice the CPU (measured here: 36 against 20 ms per query).
    """

    def __init__(self, directory: Path, settings: Any, queries: Sequence[str], k: int, batch: int, seconds: float):
        from ragkit import Index

        self.index = Index.open(directory, settings)
        self.queries, self.k, self.batch, self.seconds = list(queries), k, batch, seconds
        # both threads live as long as the ceiling, as the server's do (a thread that ends takes its team along)
        self.warm_up = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ceiling-warm-up")
        self.warm_up.submit(self.index.retrieve_many, ["warm-up query"], 1).result()
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ceiling")

    def rate(self, mode: str) -> Rate:
        return self.thread.submit(self._rate, functools.partial(self.index.retrieve_many, k=self.k, mode=mode)).result()

    def embedding(self) -> Rate:
        """The query embedding alone (``embed_queries``), same batches: the part no server can avoid."""
        return self.thread.submit(self._rate, self.index.embedder.embed_queries).result()

    def _rate(self, run: Callable[[list[str]], object]) -> Rate:
        queries, batch = self.queries, self.batch
        run(queries[:batch])  # warm-up
        done, position = 0, 0
        started, cpu = time.perf_counter(), time.process_time()
        while (elapsed := time.perf_counter() - started) < self.seconds:
            run([queries[(position + j) % len(queries)] for j in range(batch)])
            done, position = done + batch, position + batch
        return Rate(done / elapsed, 1000 * (time.process_time() - cpu) / done)

    def close(self) -> None:
        self.thread.shutdown()
        self.warm_up.shutdown()
        self.index.close()


# -- the server -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(
    index_dir: Path, config: Path, log_path: Path, ready_timeout_s: float = 300
) -> Iterator[tuple[str, int]]:
    """``ragkit serve`` on a free loopback port until the block ends (SIGTERM, then SIGKILL after 30 s)."""
    url = f"http://{LOOPBACK}:{free_port()}"
    command = [sys.executable, "-m", "ragkit.cli", "--config", str(config), "serve", "--index", str(index_dir),
               "--host", LOOPBACK, "--port", url.rsplit(":", 1)[1]]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=config.parent)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise SystemExit(f"ragkit serve exited with {process.returncode}:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise SystemExit(f"ragkit serve not ready after {ready_timeout_s:.0f} s:\n{tail(log_path)}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url, process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def tail(path: Path, limit: int = 3000) -> str:
    return path.read_text(errors="replace")[-limit:]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def server_figures(before: Mapping[Any, float], after: Mapping[Any, float], path: str) -> dict[str, Any]:
    """Over the window between two scrapes: the mean retrieve batch, and the server's p50/p99 of ``path`` (2xx),
    interpolated in its latency histogram's buckets as Prometheus's histogram_quantile does."""

    def delta(key: Any) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    batches = delta(("ragkit_retrieve_batch_size_count", ()))
    queries = delta(("ragkit_retrieve_batch_size_sum", ()))
    buckets: dict[float, float] = {}
    for key in after:
        name, labels = key
        tags = dict(labels)
        if name == "ragkit_request_duration_seconds_bucket" and tags.get("endpoint") == path \
                and tags.get("status", "").startswith("2"):
            bound = float(tags["le"])
            buckets[bound] = buckets.get(bound, 0.0) + delta(key)
    cumulative = sorted(buckets.items())
    return {
        "batches": int(batches),
        "mean_batch": round(queries / batches, 2) if batches else None,
        "server_p50_bucket_ms": histogram_quantile(0.5, cumulative),
        "server_p99_bucket_ms": histogram_quantile(0.99, cumulative),
    }


def histogram_quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> list[int | None] | None:
    """The bucket (lower, upper bound, in ms) of a Prometheus histogram, given as (upper bound s, cumulative
    count) ascending, that holds its q-quantile. Bounds rather than Prometheus's linear interpolation: the
    buckets are wide (10 to 30 s), and a point inside one would claim a precision the histogram does not have.
    The upper bound is None past the last finite bucket."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower = 0.0
    for bound, count in cumulative:
        if count >= rank:
            return [round(1000 * lower), None if math.isinf(bound) else round(1000 * bound)]
        lower = bound
    return None


def bucket(bounds: list[int | None] | None) -> str:
    if bounds is None:
        return "n/a"
    lower, upper = bounds
    return f"> {lower} ms" if upper is None else f"{lower}-{upper} ms"


# -- the load -------------------------------------------------------------------------------------------------


@dataclass
class Load:
    """What one client process saw: latencies (s) of the 2xx replies completed in the measured window, errors,
    and the CPU seconds the process spent in that window."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_s: float = 0.0


def drive(
    url: str, method: str, path: str, bodies: list[bytes | None], clients: int, first: int,
    start_at: float, warmup_s: float, seconds: float, timeout_s: float,
) -> Load:
    """Run ``clients`` closed-loop clients in this process (on uvloop when installed) from ``start_at`` (epoch s)."""
    work = _drive(url, method, path, bodies, clients, first, start_at, warmup_s, seconds, timeout_s)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(work)


async def _drive(
    url: str, method: str, path: str, bodies: list[bytes | None], clients: int, first: int,
    start_at: float, warmup_s: float, seconds: float, timeout_s: float,
) -> Load:
    """The clients share one connection pool sized to them; a reply is only counted and its status checked (its
    body is read, not parsed), so that the load generator takes as little of the shared CPU as it can."""
    load = Load()
    measure_from, stop_at = start_at + warmup_s, start_at + warmup_s + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(timeout_s, pool=None),
                                 headers=headers) as client:

        async def closed_loop(position: int) -> None:
            while time.time() < stop_at:
                body = bodies[position % len(bodies)]
                position += 1
                started = time.perf_counter()
                try:
                    response = await client.request(method, path, content=body)
                except httpx.HTTPError as exc:  # transport errors: refused, reset, timed out...
                    load.errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                elapsed = time.perf_counter() - started
                if not 200 <= response.status_code < 300:
                    load.errors[f"HTTP {response.status_code}"] += 1
                elif measure_from <= time.time() < stop_at:
                    load.latencies.append(elapsed)

        async def cpu_in_window() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.time()))
            cpu = time.process_time()
            await asyncio.sleep(max(0.0, stop_at - time.time()))
            load.cpu_s = time.process_time() - cpu

        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(cpu_in_window(), *(closed_loop(first + c) for c in range(clients)))
    return load


def _started() -> int:
    """A short no-op for the client processes, so that they are spawned before the first scenario's clock starts."""
    time.sleep(0.5)
    return os.getpid()


def probe(url: str, scenario: Scenario, body: bytes | None) -> tuple[str | None, str]:
    """One request, checked: (a problem or None, which retrieval mode and generator answered)."""
    response = httpx.request(scenario.method, f"{url}{scenario.path}", content=body,
                             headers={"content-type": "application/json"}, timeout=120)
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}", ""
    if scenario.method == "GET":
        return None, "no index work"
    data = response.json()
    if scenario.name.startswith("retrieve"):
        hits = data.get("hits") or []
        return (None if hits else "no hits"), "hits by " + ", ".join(sorted({h["retriever"] for h in hits}))
    if scenario.name == "ask":
        return (None if data.get("answer") else "empty answer"), f"mode {data.get('mode')}, {data.get('generator')}"
    message = (data.get("choices") or [{}])[0].get("message", {})
    extra = data.get("ragkit") or {}
    retrievers = ", ".join(sorted({h["retriever"] for h in extra.get("hits") or []}))
    return (None if message.get("content") else "empty message"), f"hits by {retrievers}, {extra.get('generator')}"


@dataclass
class Snapshot:
    """The server's metrics and the CPU seconds spent so far: by the server, and by the whole machine."""

    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    server_cpu_s: float
    machine_busy_s: float

    @classmethod
    def take(cls, url: str, server: psutil.Process) -> Snapshot:
        times = server.cpu_times()
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        return cls(scrape(url), times.user + times.system, sum(machine) - idle)


def run_scenario(
    pool: ProcessPoolExecutor, url: str, server: psutil.Process, scenario: Scenario, queries: Sequence[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Drive one scenario with every client process; the server's figures come from /metrics and its CPU time
    at the start and the end of the measured window."""
    bodies: list[bytes | None] = []
    for query in queries:
        body = scenario.body(query, args.k)
        bodies.append(None if body is None else json.dumps(body).encode())
    problem, answered_by = probe(url, scenario, bodies[0])
    if problem is not None:
        return {"scenario": scenario.name, "probe_failed": problem}
    procs = args.client_procs
    shares = [args.clients // procs + (1 if p < args.clients % procs else 0) for p in range(procs)]
    start_at = time.time() + 0.5
    futures, first = [], 0
    for share in shares:
        futures.append(pool.submit(drive, url, scenario.method, scenario.path, bodies, share, first, start_at,
                                   args.warmup, args.seconds, args.timeout))
        first += share
    time.sleep(max(0.0, start_at + args.warmup - time.time()))
    before = Snapshot.take(url, server)
    time.sleep(max(0.0, start_at + args.warmup + args.seconds - time.time()))
    after = Snapshot.take(url, server)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    client_cpu_s = 0.0
    for future in futures:
        load = future.result()
        latencies.extend(load.latencies)
        errors.update(load.errors)
        client_cpu_s += load.cpu_s
    latencies_ms = sorted(1000 * value for value in latencies)
    server_cpu_s = after.server_cpu_s - before.server_cpu_s
    busy_s = after.machine_busy_s - before.machine_busy_s

    def percentile(q: float) -> float | None:
        if not latencies_ms:
            return None
        return round(latencies_ms[min(len(latencies_ms) - 1, int(q * len(latencies_ms)))], 1)

    return {
        "scenario": scenario.name, "endpoint": f"{scenario.method} {scenario.path}", "answered_by": answered_by,
        "clients": args.clients, "seconds": args.seconds, "requests": len(latencies_ms),
        "requests_per_s": round(len(latencies_ms) / args.seconds, 1),
        "p50_ms": round(statistics.median(latencies_ms), 1) if latencies_ms else None,
        "p90_ms": percentile(0.9), "p99_ms": percentile(0.99),
        "errors": sum(errors.values()), "errors_by_kind": dict(errors),
        **server_figures(before.metrics, after.metrics, scenario.path),
        "cores_busy": {
            "server": round(server_cpu_s / args.seconds, 2), "clients": round(client_cpu_s / args.seconds, 2),
            "others": round(max(0.0, busy_s - server_cpu_s - client_cpu_s) / args.seconds, 2),
        },
        "server_cpu_ms_per_request": round(1000 * server_cpu_s / len(latencies_ms), 1) if latencies_ms else None,
        "client_cpu_ms_per_request": round(1000 * client_cpu_s / len(latencies_ms), 1) if latencies_ms else None,
    }


# -- the report -----------------------------------------------------------------------------------------------


def print_scenario(figures: dict[str, Any], clients: int, procs: int, cores: int) -> None:
    name, pad = figures["scenario"], " " * 16
    if "probe_failed" in figures:
        print(f"{name:16s} the first request failed, scenario skipped: {figures['probe_failed']}")
        return
    print(f"{name:16s} {figures['requests_per_s']:7.1f} req/s   p50 {figures['p50_ms']} ms   p90 {figures['p90_ms']} ms"
          f"   p99 {figures['p99_ms']} ms   ({figures['requests']} in {figures['seconds']:g} s; "
          f"{figures['answered_by']})")
    kinds = ", ".join(f"{kind} x{count}" for kind, count in sorted(figures["errors_by_kind"].items()))
    if figures["errors"]:
        verdict = "not met"
    else:
        verdict = "met" if clients >= TARGET_CLIENTS else f"not shown: {clients} clients"
    print(f"{pad} errors {figures['errors']}{' (' + kinds + ')' if kinds else ''} at {clients} clients"
          f"   (target: 0 errors at {TARGET_CLIENTS} clients): {verdict}")
    if figures["batches"]:
        p50, p99 = bucket(figures["server_p50_bucket_ms"]), bucket(figures["server_p99_bucket_ms"])
        print(f"{pad} server /metrics: mean batch {figures['mean_batch']} over {figures['batches']} retrieve_many "
              f"calls; server p50 in {p50}, p99 in {p99} (its histogram's buckets)")
    busy = figures["cores_busy"]
    server_ms, client_ms = figures["server_cpu_ms_per_request"], figures["client_cpu_ms_per_request"]
    print(f"{pad} cores busy: server {busy['server']}, clients {busy['clients']}, other processes {busy['others']} "
          f"(of {cores}); CPU per request: server {server_ms} ms, clients {client_ms} ms")
    if server_ms and client_ms and client_ms > 0.25 * server_ms and figures["clients"] / procs > 50:
        print(f"{pad} note: the clients cost {client_ms / server_ms:.0%} of the server's CPU per request: httpcore "
              f"scans its whole pool on every request (encode/httpx#3215); --client-procs {procs * 4} splits it")
    if "ceiling_queries_per_s" in figures:
        before, after = figures["ceiling_before_after"]
        print(f"{pad} ceiling: in-process retrieve_many {figures['ceiling_queries_per_s']} q/s (before {before}, "
              f"after {after}), CPU {figures['ceiling_cpu_ms_per_query']} ms per query   ratio "
              f"{figures['ratio']:.3f}   (target >= {TARGET_RATIO}): "
              f"{'met' if figures['ratio'] >= TARGET_RATIO else 'not met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="a BEIR folder or a folder of files")
    parser.add_argument("--queries", type=Path, help="queries (JSONL with a 'text' field, or one per line)")
    parser.add_argument("--clients", type=int, default=TARGET_CLIENTS, help="concurrent closed-loop clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measurement")
    parser.add_argument("--ceiling-seconds", type=float, default=8.0,
                        help="seconds of each in-process ceiling measurement (one before, one after a scenario)")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=DEFAULT_SCENARIOS,
                        help="healthz (no index work) shows what the clients and the HTTP stack alone reach")
    parser.add_argument("--client-procs", type=int, default=4,
                        help="processes the clients are spread over, each with one pool (1: one pool of --clients)")
    parser.add_argument("--k", type=int, default=5, help="hits per query")
    parser.add_argument("--max-batch", type=int, help="serve.max_batch for the server and the ceiling")
    parser.add_argument("--max-wait-ms", type=float, help="serve.max_wait_ms for the server")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request (s)")
    parser.add_argument("--graph", action="store_true", help="index with a knowledge graph (auto mode then uses it)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 50 clients, 5 s, 1 s warm-up")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.warmup, args.ceiling_seconds = min(args.clients, 50), 5.0, 1.0, 3.0
    if args.clients < 1 or not 1 <= args.client_procs <= args.clients:
        parser.error("--clients must be >= 1 and --client-procs between 1 and --clients")

    from ragkit.config import load_settings

    corpus = read_corpus(args.corpus.resolve(), args.queries)
    work = cache_root() / corpus_key(corpus, args.graph, load_settings(None).embedder.model)
    work.mkdir(parents=True, exist_ok=True)
    config = write_config(work / "ragkit.toml", corpus, args)
    settings = load_settings(config)
    index_dir = work / "index"
    index, queries = build_index(index_dir, corpus, settings)
    if not queries:
        print(f"serve_load: no queries for {args.corpus} (pass --queries)", file=sys.stderr)
        return EXIT_DATA
    serve, cores = settings.serve, os.cpu_count() or 1
    load1, load5, _ = os.getloadavg()
    print(f"corpus {args.corpus}: {index['documents']} documents, {index['chunks']} chunks, {len(queries)} "
          f"queries; index {index_dir} ({'built' if index['added'] else 'reused'} in {index['seconds']} s)")
    print(f"machine: {cores} CPU cores shared by the server, the load generator ({args.client_procs} process(es), "
          f"{args.clients} clients) and every other process (load average {load1:.1f}, {load5:.1f}); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"server settings: max_batch {serve.max_batch}, max_wait_ms {serve.max_wait_ms:g}, max_concurrent "
          f"{serve.max_concurrent}, generator extractive, k {args.k}; the ceiling uses batches of {serve.max_batch}")

    ceiling = Ceiling(index_dir, settings, queries, args.k, serve.max_batch, args.ceiling_seconds)
    results: list[dict[str, Any]] = []
    embedding: Rate | None = None
    try:
        with ProcessPoolExecutor(args.client_procs, mp_context=multiprocessing.get_context("spawn")) as pool, \
                serving(index_dir, config, work / "server.log") as (url, pid):
            for started in [pool.submit(_started) for _ in range(args.client_procs)]:
                started.result()
            print(f"ragkit serve at {url}; {args.clients} clients, {args.warmup:g} s warm-up + {args.seconds:g} s "
                  "per scenario (errors counted from the warm-up on)")
            server = psutil.Process(pid)
            for name in args.scenarios:
                scenario = SCENARIOS[name]
                if scenario.mode is None:
                    figures = run_scenario(pool, url, server, scenario, queries, args)
                else:
                    if embedding is None:
                        embedding = ceiling.embedding()
                        print(f"query embedding alone in process (embed_queries, batches of {serve.max_batch}): "
                              f"{embedding.queries_per_s:.1f} q/s, CPU {embedding.cpu_ms_per_query:.1f} ms per query")
                    first = ceiling.rate(scenario.mode)
                    figures = run_scenario(pool, url, server, scenario, queries, args)
                    last = ceiling.rate(scenario.mode)
                    rate = (first.queries_per_s + last.queries_per_s) / 2
                    figures.update(
                        ceiling_queries_per_s=round(rate, 1),
                        ceiling_before_after=[round(first.queries_per_s, 1), round(last.queries_per_s, 1)],
                        ceiling_cpu_ms_per_query=round((first.cpu_ms_per_query + last.cpu_ms_per_query) / 2, 1),
                        ratio=round(figures.get("requests_per_s", 0.0) / rate, 3), ratio_target=TARGET_RATIO,
                    )
                print_scenario(figures, args.clients, args.client_procs, cores)
                results.append(figures)
    finally:
        ceiling.close()
    load1, load5, _ = os.getloadavg()
    print(f"load average after the run {load1:.1f}, {load5:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "corpus": str(args.corpus), "index": index, "queries": len(queries), "clients": args.clients,
            "client_procs": args.client_procs, "seconds": args.seconds, "warmup_s": args.warmup, "cpu_count": cores,
            "load_average_after": [load1, load5], "k": args.k,
            "serve": {"max_batch": serve.max_batch, "max_wait_ms": serve.max_wait_ms},
            "embedding_only": None if embedding is None else dataclasses.asdict(embedding),
            "targets": {"ratio": TARGET_RATIO, "errors": 0, "clients": TARGET_CLIENTS}, "scenarios": results,
        }, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
