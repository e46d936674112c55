"""Prometheus metrics on a registry per app (never the global one), so tests can build several apps.

Names follow vLLM's (``vllm:time_to_first_token_seconds`` → ``neo_time_to_first_token_seconds``):
HTTP requests and latency by route and status; per model, finished requests by finish reason,
end-to-end latency, time to first token, inter-token latency, prompt and generated tokens; and, read
from the engines at scrape time, waiting and running requests and engine health.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neo_serving.engines.base import EngineStats

if TYPE_CHECKING:
    from neo_serving.models import WatcherState

# Bucket edges as vLLM's (seconds): tokens on a CPU take milliseconds, a request seconds to minutes.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
KNOWN_ROUTES = frozenset({"/v1/models", "/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize",
                          "/health", "/metrics", "/v1/admin/reload"})


class _EngineCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[tuple[str, EngineStats]]],
                 watcher: Callable[[], WatcherState] | None):
        self.source, self.watcher = source, watcher

    def collect(self) -> Iterable[Metric]:
        waiting = GaugeMetricFamily("neo_num_requests_waiting", "requests queued for a KV-cache row", labels=["model"])
        running = GaugeMetricFamily("neo_num_requests_running", "requests being generated", labels=["model"])
        healthy = GaugeMetricFamily("neo_engine_healthy", "1 when the model's engine takes requests", labels=["model"])
        extra: dict[str, GaugeMetricFamily] = {}
        for name, stats in self.source():
            waiting.add_metric([name], stats.waiting)
            running.add_metric([name], stats.running)
            healthy.add_metric([name], float(stats.healthy))
            for key, value in stats.extra.items():
                family = extra.setdefault(key, GaugeMetricFamily(f"neo_engine_{key}", f"engine gauge {key}",
                                                                 labels=["model"]))
                family.add_metric([name], value)
        yield from (waiting, running, healthy, *extra.values())
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
        self.request_success = Counter("neo_request_success", "finished generation requests by finish reason",
                                       ["model", "finish_reason"], registry=r)
        self.e2e_latency = Histogram("neo_e2e_request_latency_seconds", "generation request latency",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("neo_time_to_first_token_seconds", "time to first token", ["model"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("neo_inter_token_latency_seconds", "time between two tokens of a request",
                             ["model"], buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter("neo_prompt_tokens", "prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter("neo_generation_tokens", "tokens generated", ["model"], registry=r)
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

    def finish(self, prompt_tokens: int, completion_tokens: int, finish_reasons: Iterable[str | None]) -> None:
        m = self.metrics
        m.prompt_tokens.labels(self.model).inc(prompt_tokens)
        m.generation_tokens.labels(self.model).inc(completion_tokens)
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
