"""The server's Prometheus metrics (`/metrics`): requests, tokens, TTFT, tokens/s, queue wait, fallbacks."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .model import GenerationStats

TTFT_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
QUEUE_WAIT_BUCKETS_S = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # cumulative, one per bucket
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, help_text: str) -> list[str]:
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        pairs = zip(self.buckets, self.counts, strict=True)
        out += [f'{name}_bucket{{le="{bound:g}"}} {n}' for bound, n in pairs]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.total:.6f}",
                f"{name}_count {self.count}"]
        return out


class Metrics:
    """Prometheus text exposition, hand-written: a few counters, gauges and histograms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # worker threads record generations, the loop records requests
        self.in_flight = 0
        self.queued = 0
        self.model_ready = 0
        self.requests: dict[tuple[str, int], int] = {}
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.generations = 0
        self.cancelled = 0
        self.fallbacks = 0
        self.ttft = Histogram(TTFT_BUCKETS_S)
        self.tokens_per_s = Histogram(TOKENS_PER_S_BUCKETS)
        self.queue_wait = Histogram(QUEUE_WAIT_BUCKETS_S)

    def add(self, name: str, delta: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + delta)

    def request_done(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1

    def waited(self, seconds: float) -> None:
        with self._lock:
            self.queue_wait.observe(seconds)

    def generation_done(self, stats: GenerationStats | None, cancelled: bool) -> None:
        with self._lock:
            self.generations += 1
            self.cancelled += int(cancelled)
            if stats is None:
                return
            self.prompt_tokens += stats.prompt_tokens
            self.fallbacks += int(bool(stats.fallback))
            self.generated_tokens += stats.generated_tokens
            if stats.ttft_s is not None:
                self.ttft.observe(stats.ttft_s)
            if stats.tokens_per_s:
                self.tokens_per_s.observe(stats.tokens_per_s)

    def render(self) -> str:
        with self._lock:
            out: list[str] = []

            def scalar(name: str, kind: str, help_text: str, value: float) -> None:
                out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"])

            scalar("glm4_edge_model_ready", "gauge", "1 once the model is loaded.", self.model_ready)
            scalar("glm4_edge_requests_in_flight", "gauge", "Generations running now.", self.in_flight)
            scalar("glm4_edge_requests_queued", "gauge", "Requests waiting for a generation slot.",
                   self.queued)
            out += ["# HELP glm4_edge_requests_total HTTP requests answered, by path and status.",
                    "# TYPE glm4_edge_requests_total counter"]
            out += [f'glm4_edge_requests_total{{path="{path}",status="{status}"}} {n}'
                    for (path, status), n in sorted(self.requests.items())]
            scalar("glm4_edge_generations_total", "counter", "Generations finished (any reason).",
                   self.generations)
            scalar("glm4_edge_generations_cancelled_total", "counter",
                   "Generations stopped because the client left.", self.cancelled)
            scalar("glm4_edge_fallback_generations_total", "counter",
                   "Generations answered on the fallback device (over the NPU's static shape).", self.fallbacks)
            scalar("glm4_edge_prompt_tokens_total", "counter", "Prompt tokens processed.", self.prompt_tokens)
            scalar("glm4_edge_generated_tokens_total", "counter",
                   "Tokens generated (counted when each generation ends).", self.generated_tokens)
            out += self.ttft.lines("glm4_edge_time_to_first_token_seconds",
                                   "Time from generation start to the first token.")
            out += self.tokens_per_s.lines("glm4_edge_decode_tokens_per_second",
                                           "Decode rate after the first token, per generation.")
            out += self.queue_wait.lines("glm4_edge_queue_wait_seconds",
                                         "Time a request waited for a generation slot.")
            return "\n".join(out) + "\n"
