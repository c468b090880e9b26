"""Prometheus metrics (exposed on BentoML's /metrics) and the engine observer that records them.

`bentoml.metrics` proxies prometheus_client and handles BentoML's multiprocess collection.
"""

from __future__ import annotations

import bentoml

from serving.engines.types import EngineObserver

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)

REQUESTS = bentoml.metrics.Counter(
    name="modelplatform_requests_total",
    documentation="HTTP requests by route and status",
    labelnames=["route", "status"],
)
LATENCY = bentoml.metrics.Histogram(
    name="modelplatform_request_seconds",
    documentation="End-to-end request latency (to the last byte, streams included)",
    labelnames=["route"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = bentoml.metrics.Histogram(
    name="modelplatform_time_to_first_token_seconds",
    documentation="Chat: enqueue to first token",
    buckets=_LATENCY_BUCKETS,
)
ITL = bentoml.metrics.Histogram(
    name="modelplatform_inter_token_seconds", documentation="Chat: gap between tokens", buckets=_TOKEN_GAP_BUCKETS
)
QUEUE = bentoml.metrics.Histogram(
    name="modelplatform_queue_seconds",
    documentation="Wait before a request (chat) or text (embedder) enters a batch",
    labelnames=["engine"],
    buckets=_LATENCY_BUCKETS,
)
BATCH = bentoml.metrics.Histogram(
    name="modelplatform_batch_size",
    documentation="Rows per chat decode step / texts per embedder forward",
    labelnames=["engine"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
# Gauges for tests and autoscalers (KEDA / HPA on custom metrics): how much work each engine holds now.
# livesum: BentoML collects metrics across worker processes; a dead worker's last value must not linger.
RUNNING = bentoml.metrics.Gauge(
    name="modelplatform_running",
    documentation="Requests (chat) or texts (embedder) in the batch being computed now",
    labelnames=["engine"],
    multiprocess_mode="livesum",
)
WAITING = bentoml.metrics.Gauge(
    name="modelplatform_waiting",
    documentation="Requests (chat) or texts (embedder) queued for a batch",
    labelnames=["engine"],
    multiprocess_mode="livesum",
)
STAGES = bentoml.metrics.Histogram(
    name="modelplatform_stage_seconds",
    documentation="Search and RAG: time in each stage before generation (retrieve, rerank, prompt) and chat queueing",
    labelnames=["route", "stage"],
    buckets=(0.001, 0.0025, 0.005, *_LATENCY_BUCKETS),  # a lexical search takes about a millisecond
)
PROMPT_TOKENS = bentoml.metrics.Counter(name="modelplatform_prompt_tokens_total", documentation="Chat prompt tokens")
COMPLETION_TOKENS = bentoml.metrics.Counter(
    name="modelplatform_completion_tokens_total", documentation="Chat generated tokens"
)


class PrometheusObserver(EngineObserver):
    def load(self, engine: str, running: int, waiting: int) -> None:
        RUNNING.labels(engine=engine).set(running)
        WAITING.labels(engine=engine).set(waiting)

    def queue_time(self, engine: str, seconds: float) -> None:
        QUEUE.labels(engine=engine).observe(seconds)

    def batch_size(self, engine: str, size: int) -> None:
        BATCH.labels(engine=engine).observe(size)

    def first_token(self, seconds: float) -> None:
        TTFT.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        ITL.observe(seconds)

    def tokens(self, prompt: int, completion: int) -> None:
        PROMPT_TOKENS.inc(prompt)
        COMPLETION_TOKENS.inc(completion)


def record_request(route: str, status: int, seconds: float, stages: dict[str, float]) -> None:
    REQUESTS.labels(route=route, status=str(status)).inc()
    LATENCY.labels(route=route).observe(seconds)
    for stage, ms in stages.items():
        STAGES.labels(route=route, stage=stage).observe(ms / 1000)
