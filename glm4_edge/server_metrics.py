"""The server's Prometheus metrics (`/metrics`): requests, tokens, TTFT, tokens/s, queue wait, fallbacks.

Kept with `prometheus_client`, one registry per server (tests run several servers in one process). The
metric names are the ones the hand-written exposition used before, so dashboards and
`benchmarks/server_load.py` read them unchanged; counters carry no `_created` series (as before).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .model import GenerationStats

TTFT_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
QUEUE_WAIT_BUCKETS_S = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# A `_created` timestamp beside every counter doubles the exposition and no dashboard here reads it.
disable_created_metrics()


class Metrics:
    """The server's counters, gauges and histograms; thread-safe (prometheus_client locks each one).

    `add(name, delta)` moves one of the plain counters or gauges named in `_SCALARS`.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._model_ready = Gauge("glm4_edge_model_ready", "1 once the model is loaded.", registry=r)
        self._scalars = {
            "in_flight": Gauge("glm4_edge_requests_in_flight", "Generations running now.", registry=r),
            "queued": Gauge("glm4_edge_requests_queued", "Requests waiting for a generation slot.", registry=r),
            "generations": Counter("glm4_edge_generations", "Generations finished (any reason).", registry=r),
            "cancelled": Counter("glm4_edge_generations_cancelled",
                                 "Generations stopped because the client left.", registry=r),
            "fallbacks": Counter("glm4_edge_fallback_generations", "Generations answered on the fallback device "
                                 "(over the NPU's static shape).", registry=r),
            "prompt_tokens": Counter("glm4_edge_prompt_tokens", "Prompt tokens processed.", registry=r),
            "generated_tokens": Counter("glm4_edge_generated_tokens",
                                        "Tokens generated (counted when each generation ends).", registry=r),
        }
        self._requests = Counter("glm4_edge_requests", "HTTP requests answered, by path and status.",
                                 ["path", "status"], registry=r)
        self._ttft = Histogram("glm4_edge_time_to_first_token_seconds",
                               "Time from generation start to the first token.", buckets=TTFT_BUCKETS_S, registry=r)
        self._tokens_per_s = Histogram("glm4_edge_decode_tokens_per_second",
                                       "Decode rate after the first token, per generation.",
                                       buckets=TOKENS_PER_S_BUCKETS, registry=r)
        self._queue_wait = Histogram("glm4_edge_queue_wait_seconds", "Time a request waited for a generation slot.",
                                     buckets=QUEUE_WAIT_BUCKETS_S, registry=r)

    def ready(self) -> None:
        """The model has loaded."""
        self._model_ready.set(1)

    def add(self, name: str, delta: int = 1) -> None:
        self._scalars[name].inc(delta)

    def request_done(self, path: str, status: int) -> None:
        self._requests.labels(path=path, status=str(status)).inc()

    def waited(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def generation_done(self, stats: GenerationStats | None, cancelled: bool) -> None:
        self.add("generations")
        if cancelled:
            self.add("cancelled")
        if stats is None:
            return
        self.add("prompt_tokens", stats.prompt_tokens)
        if stats.fallback:
            self.add("fallbacks")
        self.add("generated_tokens", stats.generated_tokens)
        if stats.ttft_s is not None:
            self._ttft.observe(stats.ttft_s)
        if stats.tokens_per_s:
            self._tokens_per_s.observe(stats.tokens_per_s)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        return generate_latest(self.registry).decode()
