"""Prometheus metrics of one ``ragkit serve`` app, in a registry of its own (several apps can share a process).

=====================================  ==========  ==========================================================
metric                                 type        what
=====================================  ==========  ==========================================================
ragkit_request_duration_seconds        histogram   by endpoint (route template), mode, status; p50/p90/p99
ragkit_requests_waiting                gauge       /v1 requests waiting for admission (fair queue)
ragkit_retrieve_queue_depth            gauge       queries waiting for the micro-batcher
ragkit_retrieve_batch_size             histogram   queries per ``retrieve_many`` call
ragkit_generated_tokens_total          counter     by generator (the generator's count, else ~4 chars a token)
ragkit_answers_total                   counter     by generator
ragkit_degraded_answers_total          counter     by generator (failed or too slow: extractive instead)
ragkit_index_documents / _chunks       gauge       read from the catalog at scrape time
ragkit_index_generation                gauge       the catalog generation (moves with every committed write)
ragkit_feedback_total                  counter     feedback received
ragkit_feedback_hits_total             counter     feedback where at least one cited chunk was relevant
ragkit_feedback_hit_rate               gauge       hits / feedback since the server started (live hit-rate)
ragkit_feedback_cited_relevant_ratio   gauge       relevant cited chunks / cited chunks
=====================================  ==========  ==========================================================
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ragkit.connectors.generators.prompt import approx_token_count
from ragkit.types import Answer

# Roughly x1.5 apart from 5 ms to 2 min, so a p50 or p99 read off the histogram is within ~25% at any load.
LATENCY_BUCKETS = (
    0.005, 0.0075, 0.01, 0.015, 0.025, 0.04, 0.06, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5, 2.5, 4.0, 6.0, 10.0, 15.0,
    20.0, 30.0, 45.0, 60.0, 90.0, 120.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class IndexCollector:
    """Documents, chunks and generation of the index, read from its catalog when Prometheus scrapes (so they
    follow writes by ``ragkit index`` in another process too)."""

    def __init__(self, read: Callable[[], Mapping[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        for key, help_text in (
            ("documents", "documents in the index"),
            ("chunks", "chunks in the index"),
            ("generation", "catalog generation (bumped by every committed write)"),
        ):
            yield GaugeMetricFamily(f"ragkit_index_{key}", help_text, value=values[key])


class ServeMetrics:
    """Every metric of one app. Thread-safe (prometheus-client's metrics are), so batcher and generation
    threads record directly.

    >>> metrics = ServeMetrics(lambda: {"documents": 3, "chunks": 9, "generation": 4})
    >>> metrics.batch(8); body, content_type = metrics.render("text/plain")
    """

    def __init__(self, index_counts: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.latency = Histogram(
            "ragkit_request_duration_seconds",
            "request latency (to the end of the response body)",
            ("endpoint", "mode", "status"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.waiting = Gauge("ragkit_requests_waiting", "/v1 requests waiting for admission", registry=registry)
        self.queue_depth = Gauge(
            "ragkit_retrieve_queue_depth", "queries waiting for the retrieval micro-batcher", registry=registry
        )
        self.batch_size = Histogram(
            "ragkit_retrieve_batch_size", "queries per retrieve_many call", buckets=BATCH_BUCKETS, registry=registry
        )
        self.tokens = Counter(
            "ragkit_generated_tokens", "tokens generated (approximate when the generator gives no count)",
            ("generator",), registry=registry,
        )
        self.answers = Counter("ragkit_answers", "answers written", ("generator",), registry=registry)
        self.degraded = Counter(
            "ragkit_degraded_answers", "answers degraded to extractive (generator failed or too slow)",
            ("generator",), registry=registry,
        )
        self.feedback = Counter("ragkit_feedback", "feedback received", registry=registry)
        self.feedback_hits = Counter(
            "ragkit_feedback_hits", "feedback where at least one cited chunk was relevant", registry=registry
        )
        self.hit_rate = Gauge(
            "ragkit_feedback_hit_rate", "share of feedback with a relevant cited chunk (live hit-rate)",
            registry=registry,
        )
        self.cited_relevant = Gauge(
            "ragkit_feedback_cited_relevant_ratio", "relevant cited chunks / cited chunks, over all feedback",
            registry=registry,
        )
        registry.register(IndexCollector(index_counts))
        self._feedback_lock = threading.Lock()
        self._feedback_counts = [0, 0, 0, 0]  # feedback, hits, cited, relevant cited

    def request(self, endpoint: str, mode: str, status: int, seconds: float) -> None:
        self.latency.labels(endpoint, mode, str(status)).observe(seconds)

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def answer(self, answer: Answer) -> None:
        """Count an answer: its tokens (``meta["usage"]["completion_tokens"]`` when the generator reported
        them, else estimated from the text) and whether it was degraded."""
        usage = answer.meta.get("usage") if isinstance(answer.meta, Mapping) else None
        tokens = usage.get("completion_tokens") if isinstance(usage, Mapping) else None
        if not isinstance(tokens, int) or tokens < 0:
            tokens = approx_token_count(answer.text)
        name = answer.meta.get("primary", answer.generator) if answer.degraded else answer.generator
        self.tokens.labels(answer.generator).inc(tokens)
        self.answers.labels(answer.generator).inc()
        if answer.degraded:
            self.degraded.labels(str(name)).inc()

    def record_feedback(self, cited: Iterable[str], relevant: Iterable[str]) -> float:
        """One feedback: ``relevant`` among ``cited``. Returns the hit-rate now."""
        shown = set(cited)
        useful = shown & set(relevant)
        with self._feedback_lock:
            counts = self._feedback_counts
            counts[0] += 1
            counts[1] += bool(useful)
            counts[2] += len(shown)
            counts[3] += len(useful)
            rate = counts[1] / counts[0]
            self.hit_rate.set(rate)
            self.cited_relevant.set(counts[3] / counts[2] if counts[2] else 0.0)
        self.feedback.inc()
        if useful:
            self.feedback_hits.inc()
        return rate

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for a scrape with this ``Accept`` header: (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
