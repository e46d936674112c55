"""Prometheus metrics on a registry per app (never the global one), so tests can build several apps.

What vLLM also measures has vLLM's name and labels with Neo's prefix (``vllm:time_to_first_token_seconds``
→ ``neo:time_to_first_token_seconds``, label ``model_name``; finish reasons as ``finished_reason``), so
one dashboard reads both (``monitoring/grafana/neo-serving.json``, prefix variable ``vllm`` or ``neo``):
finished requests, prompt and generated tokens, time to first token, inter-token latency, end-to-end
latency, queue time, per-request prompt and generation token counts, and, read from the engines at
scrape time, running and waiting requests, KV-cache usage and prefix-cache queries and hits (tokens).
What only Neo has is ``neo_*``: HTTP requests and latency by route and status, engine health, engine step
counters, the registry watcher.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neo_serving.engines.base import EngineStats

if TYPE_CHECKING:
    from neo_serving.models import WatcherState

PREFIX = "neo:"  # vLLM's is "vllm:"
MODEL = "model_name"  # vLLM's label of the served model
# Bucket edges as vLLM's (seconds): tokens on a CPU take milliseconds, a request seconds to minutes.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
KNOWN_ROUTES = frozenset({"/v1/models", "/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize",
                          "/tokenizer_info",
                          "/health", "/metrics", "/metrics/replicas", "/v1/admin/reload"})


class _EngineCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[tuple[str, EngineStats]]],
                 watcher: Callable[[], WatcherState] | None):
        self.source, self.watcher = source, watcher

    def collect(self) -> Iterable[Metric]:
        waiting = GaugeMetricFamily(f"{PREFIX}num_requests_waiting", "requests queued for a KV-cache row",
                                    labels=[MODEL])
        running = GaugeMetricFamily(f"{PREFIX}num_requests_running", "requests being generated", labels=[MODEL])
        usage = GaugeMetricFamily(f"{PREFIX}kv_cache_usage_perc", "KV-cache usage (1 = full), as vLLM's",
                                  labels=[MODEL])
        # vLLM's v1 names: both count prompt tokens, so hits / queries is the token hit rate
        queries = CounterMetricFamily(f"{PREFIX}prefix_cache_queries", "prompt tokens looked up in the prefix cache",
                                      labels=[MODEL])
        hits = CounterMetricFamily(f"{PREFIX}prefix_cache_hits", "prompt tokens found in the prefix cache",
                                   labels=[MODEL])
        healthy = GaugeMetricFamily("neo_engine_healthy", "1 when the model's engine takes requests", labels=["model"])
        extra: dict[str, GaugeMetricFamily] = {}
        counters: dict[str, CounterMetricFamily] = {}
        for name, stats in self.source():
            waiting.add_metric([name], stats.waiting)
            running.add_metric([name], stats.running)
            healthy.add_metric([name], float(stats.healthy))
            if stats.kv_cache_usage is not None:
                usage.add_metric([name], stats.kv_cache_usage)
            if stats.prefix_cache_queries is not None:
                queries.add_metric([name], stats.prefix_cache_queries)
                hits.add_metric([name], stats.prefix_cache_hits or 0)
            for key, value in stats.extra.items():
                family = extra.setdefault(key, GaugeMetricFamily(f"neo_engine_{key}", f"engine gauge {key}",
                                                                 labels=["model"]))
                family.add_metric([name], value)
            for key, value in stats.counters.items():
                counter = counters.setdefault(key, CounterMetricFamily(f"neo_engine_{key}", f"engine total {key}",
                                                                       labels=["model"]))
                counter.add_metric([name], value)
        yield from (waiting, running, usage, queries, hits, healthy, *extra.values(), *counters.values())
        if self.watcher is not None:
            state = self.watcher()
            yield GaugeMetricFamily("neo_registry_watcher_running", "1 while the registry watcher follows new "
                                    "versions", value=float(state.running))
            skipped = GaugeMetricFamily("neo_registry_watcher_skipped", "1 for a version that failed to start "
                                        "and is skipped until a newer one", labels=["model", "ref"])
            for name, (ref, _) in state.skipped.items():
                skipped.add_metric([name, ref], 1.0)
            yield skipped


class ServingMetrics:
    def __init__(self, engine_stats: Callable[[], Iterable[tuple[str, EngineStats]]],
                 watcher: Callable[[], WatcherState] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("neo_http_requests", "HTTP requests by route and status",
                                     ["method", "route", "status"], registry=r)
        self.http_latency = Histogram("neo_http_request_duration_seconds", "HTTP request duration (streams: "
                                      "until the last byte)", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.request_success = Counter(f"{PREFIX}request_success", "finished generation requests by finish reason",
                                       [MODEL, "finished_reason"], registry=r)
        self.e2e_latency = Histogram(f"{PREFIX}e2e_request_latency_seconds", "generation request latency",
                                     [MODEL], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram(f"{PREFIX}request_queue_time_seconds", "time a request waited for the engine",
                                    [MODEL], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(f"{PREFIX}time_to_first_token_seconds", "time to first token", [MODEL],
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram(f"{PREFIX}inter_token_latency_seconds", "time between two tokens of a request",
                             [MODEL], buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}prompt_tokens", "prompt tokens processed", [MODEL], registry=r)
        self.generation_tokens = Counter(f"{PREFIX}generation_tokens", "tokens generated", [MODEL], registry=r)
        self.request_prompt_tokens = Histogram(f"{PREFIX}request_prompt_tokens", "prompt tokens per request",
                                               [MODEL], buckets=TOKEN_BUCKETS, registry=r)
        self.request_generation_tokens = Histogram(f"{PREFIX}request_generation_tokens",
                                                   "generated tokens per request", [MODEL], buckets=TOKEN_BUCKETS,
                                                   registry=r)
        r.register(_EngineCollector(engine_stats, watcher))

    def request(self, model: str) -> RequestMetrics:
        return RequestMetrics(self, model)


class RequestMetrics:
    """One generation request: token timings (a ``choices.TokenTimer``) and its totals."""

    def __init__(self, metrics: ServingMetrics, model: str):
        self.metrics, self.model = metrics, model
        self.start = time.perf_counter()
        self._last: float | None = None

    def tokens(self, count: int, now: float) -> None:
        if self._last is None:
            self.metrics.ttft.labels(self.model).observe(now - self.start)
        else:
            gap = (now - self._last) / count
            itl = self.metrics.itl.labels(self.model)
            for _ in range(count):
                itl.observe(gap)
        self._last = now

    def queued(self, seconds: float) -> None:
        self.metrics.queue_time.labels(self.model).observe(seconds)

    def finish(self, prompt_tokens: int, completion_tokens: int, finish_reasons: Iterable[str | None]) -> None:
        m = self.metrics
        m.prompt_tokens.labels(self.model).inc(prompt_tokens)
        m.generation_tokens.labels(self.model).inc(completion_tokens)
        m.request_prompt_tokens.labels(self.model).observe(prompt_tokens)
        m.request_generation_tokens.labels(self.model).observe(completion_tokens)
        m.e2e_latency.labels(self.model).observe(time.perf_counter() - self.start)
        for reason in finish_reasons:
            m.request_success.labels(self.model, reason or "abort").inc()


class HTTPMetricsMiddleware:
    """Counts every HTTP request and its duration (a pure ASGI middleware, so streams are timed to the end)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500
        route = scope["path"] if scope["path"] in KNOWN_ROUTES else "other"

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.http_requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.http_latency.labels(route).observe(time.perf_counter() - start)


def relabel_replica_metrics(texts: Iterable[tuple[str, str, str]]) -> bytes:
    """``(model, replica url, its /metrics text)`` → one exposition with ``replica`` and ``served_model``
    labels on every sample, so several replicas' identical series stay apart (``GET /metrics/replicas``)."""
    families: dict[str, Metric] = {}
    for model, replica, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                             family.unit))
            for sample in family.samples:
                labels = {**sample.labels, "replica": replica, "served_model": model}
                merged.add_sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)

    class _Replay(Collector):
        def collect(self) -> Iterable[Metric]:
            return families.values()

    registry = CollectorRegistry()
    registry.register(_Replay())
    return generate_latest(registry)
