"""Bounded load test for `glm4-edge serve`: many clients, some dropping mid-stream, RSS watched.

    python benchmarks/server_load.py MODEL_FOLDER            # starts a server on 127.0.0.1
    python benchmarks/server_load.py --synthetic             # builds a looping test model first
    python benchmarks/server_load.py --base-url http://127.0.0.1:8000 --pid 1234
    python benchmarks/server_load.py MODEL_FOLDER --bench --max-concurrency 4   # parallel decoding figures

Defaults: 200 requests from 8 concurrent clients plus 20 streams dropped after a few events. Each
request is checked (status, shape, finish reason); the server's RSS is sampled with psutil after a
warm-up and at the end, and its /metrics must show every dropped stream cancelled and no generation
left running. Exit 1 if any check fails. Only ever talks to the address given (127.0.0.1 by default).

--bench measures instead what continuous batching buys: aggregate tokens/s of 4 concurrent streams
against one (issue target >= 2.5x), and the latency of a max_tokens=1 request whose ~1000-token
prefix another request just computed, against a cold one (target <= 0.3x). Trials alternate so a
busy machine skews both sides alike; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

DEFAULT_REQUESTS = 200
DEFAULT_CLIENTS = 8
DEFAULT_DROPS = 20
DEFAULT_MAX_TOKENS = 32
DROP_MAX_TOKENS = 2000  # long enough that a drop always lands mid-generation
DROP_AFTER_EVENTS = 3
WARMUP_REQUESTS = 40  # RSS baseline after these: first requests allocate caches that are then reused
MAX_RSS_GROWTH = 0.10
REQUEST_TIMEOUT_S = 120.0
STARTUP_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 30.0
LOOP_PIECES = ["\n", "tick", " tock", " 滴", "答", " "]  # as tests/conftest.py's loop_model
BENCH_TRIALS = 3
BENCH_STREAMS = 4
BENCH_MAX_TOKENS = 128
BENCH_PREFIX_TOKENS = 1000


@dataclass
class LoadResult:
    requests: int
    drops: int
    clients: int
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    requests_per_s: float = 0.0
    completion_tokens: int = 0
    tokens_per_s: float = 0.0
    latency_p50_s: float = 0.0
    latency_p95_s: float = 0.0
    cancelled_generations: int = 0
    rss_baseline_mb: float = 0.0
    rss_final_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_growth: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and self.rss_growth <= MAX_RSS_GROWTH

    def summary(self) -> str:
        return (f"{self.requests} requests + {self.drops} drops from {self.clients} clients in "
                f"{self.wall_s:.1f} s "
                f"({self.requests_per_s:.1f} req/s, {self.tokens_per_s:.0f} completion tok/s); latency p50 "
                f"{self.latency_p50_s * 1000:.0f} ms, p95 {self.latency_p95_s * 1000:.0f} ms; "
                f"{self.cancelled_generations} generations cancelled; RSS {self.rss_baseline_mb:.0f} -> "
                f"{self.rss_final_mb:.0f} MB ({self.rss_growth:+.1%}, peak {self.rss_peak_mb:.0f} MB); "
                f"{len(self.errors)} errors")


def metrics(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(glm4_edge_\w+) (\S+)$", text, re.M)}


def _job_payload(index: int, max_tokens: int, model: str) -> tuple[str, dict]:
    """Vary the shape: chat and raw completions, streaming and not, with and without usage."""
    kind = index % 4
    if kind == 3:
        prompt = f"[gMASK]<sop><|user|>\nrequest {index}<|assistant|>"
        return "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                   "temperature": 0, "stream": index % 8 == 3}
    body = {"model": model, "messages": [{"role": "user", "content": f"request {index}: hello"}],
            "max_tokens": max_tokens, "temperature": 0.7 if kind == 2 else 0, "seed": index}
    if kind == 1:
        body.update(stream=True, stream_options={"include_usage": True})
    return "/v1/chat/completions", body


def _read_stream(response: httpx.Response) -> tuple[str, str | None, int]:
    """-> (text, finish_reason, completion tokens from the usage chunk or 0)."""
    text, finish, tokens, done = [], None, 0, False
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            break
        event = json.loads(data)
        if "error" in event:
            raise ValueError(f"error event: {event['error']}")
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        for choice in event["choices"]:
            text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
            finish = choice.get("finish_reason") or finish
    if not done:
        raise ValueError("stream ended without data: [DONE]")
    return "".join(text), finish, tokens


def _one_request(client: httpx.Client, index: int, max_tokens: int, model: str) -> int:
    """Run request `index` and check it; -> completion tokens seen. Raises on anything wrong."""
    path, body = _job_payload(index, max_tokens, model)
    if body.get("stream"):
        with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}: {response.read()[:200]!r}")
            text, finish, tokens = _read_stream(response)
    else:
        response = client.post(path, json=body)
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
        reply = response.json()
        choice = reply["choices"][0]
        text = choice.get("text") if "text" in choice else choice["message"]["content"]
        finish, tokens = choice["finish_reason"], reply["usage"]["completion_tokens"]
    if finish not in ("stop", "length"):
        raise ValueError(f"finish_reason {finish!r}")
    if text is None:
        raise ValueError("no text")
    return tokens


def _drop(client: httpx.Client, index: int, model: str) -> None:
    # ignore_eos: a model that ends its answer within DROP_AFTER_EVENTS events (random weights often
    # write an end token at once) would otherwise finish on its own, and the "drop" would cancel nothing.
    body = {"model": model, "messages": [{"role": "user", "content": f"drop {index}"}],
            "max_tokens": DROP_MAX_TOKENS, "temperature": 0, "stream": True, "ignore_eos": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        events = 0
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]" or '"finish_reason":"' in line.replace(" ", ""):
                raise ValueError("the answer ended before the drop")
            if line.startswith('data: {"error"'):  # failed mid-stream: not a drop, and worth knowing
                raise ValueError(f"the stream failed before the drop: {line[6:200]}")
            events += 1
            if events >= DROP_AFTER_EVENTS:
                break  # leaving the block closes the connection mid-stream


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _jobs(requests: int, drops: int, first: int = 0) -> queue.SimpleQueue:
    """Requests in order, with the drops spread evenly among them."""
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    drop_every = max(1, requests // max(1, drops))
    dropped = 0
    for index in range(first, first + requests):
        jobs.put(("request", index))
        if dropped < drops and (index - first) % drop_every == drop_every - 1:
            jobs.put(("drop", index))
            dropped += 1
    for index in range(dropped, drops):
        jobs.put(("drop", first + requests + index))
    return jobs


def _run_clients(base_url: str, headers: dict[str, str], jobs: queue.SimpleQueue, clients: int, model: str,
                 max_tokens: int, errors: list[str]) -> tuple[list[float], list[int]]:
    """`clients` threads drain `jobs`; -> (latencies, completion tokens) of the requests that passed."""
    latencies: list[float] = []
    tokens: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
            while True:
                try:
                    kind, index = jobs.get_nowait()
                except queue.Empty:
                    return
                started = time.perf_counter()
                try:
                    if kind == "drop":
                        _drop(client, index, model)
                        continue
                    count = _one_request(client, index, max_tokens, model)
                except Exception as error:  # recorded, and the run goes on
                    with lock:
                        errors.append(f"{kind} {index}: {type(error).__name__}: {error}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)
                    tokens.append(count)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, tokens


def _settle(control: httpx.Client, errors: list[str]) -> dict[str, float]:
    """Wait until no generation runs or waits; -> the metrics then."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    current = metrics(control)
    while current["glm4_edge_requests_in_flight"] or current["glm4_edge_requests_queued"]:
        if time.monotonic() > deadline:
            errors.append(f"generations still running {SETTLE_TIMEOUT_S:.0f} s after the last client")
            break
        time.sleep(0.05)
        current = metrics(control)
    return current


def run_load(base_url: str, pid: int, *, requests: int = DEFAULT_REQUESTS, clients: int = DEFAULT_CLIENTS,
             drops: int = DEFAULT_DROPS, max_tokens: int = DEFAULT_MAX_TOKENS, api_key: str | None = None,
             warmup: int = WARMUP_REQUESTS) -> LoadResult:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    result = LoadResult(requests=requests, drops=drops, clients=clients)
    server = psutil.Process(pid)
    control = httpx.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S)
    model = control.get("/v1/models").json()["data"][0]["id"]

    # Warm-up in the same shape (concurrent clients, a few drops), not counted: the RSS baseline then
    # includes what the server allocates once for that much concurrency (KV cache, thread arenas).
    warmup_drops = max(1, warmup * drops // max(1, requests)) if drops else 0
    _run_clients(base_url, headers, _jobs(warmup, warmup_drops, first=-10_000), clients, model, max_tokens,
                 result.errors)
    before = _settle(control, result.errors)
    baseline = server.memory_info().rss
    peak = [baseline]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            peak[0] = max(peak[0], server.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    latencies, tokens = _run_clients(base_url, headers, _jobs(requests, drops), clients, model, max_tokens,
                                     result.errors)
    result.wall_s = time.perf_counter() - started
    # Dropped streams must end on the server too: nothing left in flight, each one counted cancelled.
    after = _settle(control, result.errors)
    sampling.set()
    sampler.join()
    final = server.memory_info().rss
    result.cancelled_generations = int(after["glm4_edge_generations_cancelled_total"]
                                       - before["glm4_edge_generations_cancelled_total"])
    if result.cancelled_generations < drops:
        result.errors.append(f"only {result.cancelled_generations} of {drops} dropped streams were cancelled")
    result.requests_per_s = requests / result.wall_s
    result.completion_tokens = sum(tokens)
    result.tokens_per_s = result.completion_tokens / result.wall_s
    result.latency_p50_s = _percentile(latencies, 0.5)
    result.latency_p95_s = _percentile(latencies, 0.95)
    result.rss_baseline_mb, result.rss_final_mb = baseline / 2**20, final / 2**20
    result.rss_peak_mb = max(peak[0], final) / 2**20
    result.rss_growth = final / baseline - 1
    control.close()
    return result


@dataclass
class BenchResult:
    streams: int
    single_tokens_per_s: float
    parallel_tokens_per_s: float
    parallel_ratio: float
    prefix_tokens: int
    cold_ttft_s: float
    shared_prefix_ttft_s: float
    ttft_ratio: float

    def summary(self) -> str:
        return (f"{self.streams} streams: {self.parallel_tokens_per_s:.1f} tok/s vs one: "
                f"{self.single_tokens_per_s:.1f} tok/s ({self.parallel_ratio:.2f}x, target >= 2.5x); "
                f"{self.prefix_tokens}-token prompt, first token: cold {self.cold_ttft_s * 1000:.0f} ms, "
                f"shared prefix {self.shared_prefix_ttft_s * 1000:.0f} ms ({self.ttft_ratio:.2f}x, "
                "target <= 0.3x)")


def _aggregate_tokens_per_s(client: httpx.Client, model: str, streams: int, max_tokens: int,
                            trial: int) -> float:
    tokens = [0] * streams

    def one(index: int) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": f"trial {trial} stream {index}"}],
                "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
        response = client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        tokens[index] = response.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(tokens) / (time.perf_counter() - started)


def _first_token_s(client: httpx.Client, model: str, system: str, question: str) -> tuple[float, int]:
    body = {"model": model, "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return time.perf_counter() - started, response.json()["usage"]["prompt_tokens"]


def run_bench(base_url: str, *, api_key: str | None = None, streams: int = BENCH_STREAMS,
              max_tokens: int = BENCH_MAX_TOKENS, prefix_tokens: int = BENCH_PREFIX_TOKENS,
              trials: int = BENCH_TRIALS) -> BenchResult:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S,
                      limits=httpx.Limits(max_connections=streams * 2)) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        _aggregate_tokens_per_s(client, model, streams, 8, -1)  # warm-up
        single, parallel = [], []
        for trial in range(trials):
            single.append(_aggregate_tokens_per_s(client, model, 1, max_tokens, trial))
            parallel.append(_aggregate_tokens_per_s(client, model, streams, max_tokens, trial))
        # Size the shared prefix from two calibration prompts (own nonces: nothing cached to reuse).
        def facts(count: int) -> str:
            return " ".join(f"fact{i} is{i % 7}." for i in range(count))

        _, small = _first_token_s(client, model, f"calibration a {facts(10)}", "q")
        _, large = _first_token_s(client, model, f"calibration b {facts(110)}", "q")
        per_fact = (large - small) / 100
        count = max(1, round((prefix_tokens - (small - 10 * per_fact)) / per_fact))
        cold, warm, size = [], [], 0
        for trial in range(trials):
            system = f"nonce {trial} {time.time_ns()} {facts(count)}"
            first, size = _first_token_s(client, model, system, "first question?")
            second, _ = _first_token_s(client, model, system, "second, different question?")
            cold.append(first)
            warm.append(second)
    result = BenchResult(streams=streams, single_tokens_per_s=statistics.median(single),
                         parallel_tokens_per_s=statistics.median(parallel), parallel_ratio=0.0,
                         prefix_tokens=size, cold_ttft_s=statistics.median(cold),
                         shared_prefix_ttft_s=statistics.median(warm), ttft_ratio=0.0)
    result.parallel_ratio = result.parallel_tokens_per_s / result.single_tokens_per_s
    result.ttft_ratio = result.shared_prefix_ttft_s / result.cold_ttft_s
    return result


def start_server(model: Path, *extra: str, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`glm4-edge serve MODEL --port 0` on 127.0.0.1; -> (process, base URL) once /health says 200."""
    log = log or Path(tempfile.mkstemp(prefix="glm4-edge-serve-", suffix=".log")[1])
    command = [sys.executable, "-m", "glm4_edge.cli.main", "serve", str(model), "--host", "127.0.0.1",
               "--port", "0", "--log-level", "warning", *extra]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", log.read_text(errors="replace"))
        if found:
            base_url = f"http://127.0.0.1:{found.group(1)}"
            try:
                if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                    return process, base_url
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the server was not ready in {STARTUP_TIMEOUT_S:.0f} s:\n{log.read_text()}")


def build_synthetic(folder: Path) -> Path:
    """A tiny GLM-4 that never ends its turn (needs the [convert] extra)."""
    from glm4_edge.convert.export import ConvertOptions, convert
    from glm4_edge.convert.synthetic import build_scripted_checkpoint

    source = build_scripted_checkpoint(folder / "loop", LOOP_PIECES, loop=True)
    output = folder / "loop-fp16-ov"
    convert(ConvertOptions(source=str(source), output=output, weight_format="fp16"))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="converted model folder to serve")
    parser.add_argument("--synthetic", action="store_true", help="build and serve a tiny looping model")
    parser.add_argument("--base-url", help="use a running server instead (with --pid)")
    parser.add_argument("--pid", type=int, help="the running server's process id, for RSS")
    parser.add_argument("--api-key", default=os.environ.get("GLM4_EDGE_API_KEY"))
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    parser.add_argument("--drops", type=int, default=DEFAULT_DROPS)
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--max-concurrency", type=int, default=1,
                        help="passed to the server it starts (above 1: continuous batching)")
    parser.add_argument("--bench", action="store_true",
                        help="measure parallel decoding and prefix reuse instead of the load test")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.base_url and not args.pid:
        parser.error("--base-url needs --pid (the server's RSS is part of the result)")
    process = None
    with tempfile.TemporaryDirectory(prefix="glm4-edge-load-") as scratch:
        if args.base_url:
            base_url, pid = args.base_url.rstrip("/"), args.pid
        else:
            model = build_synthetic(Path(scratch)) if args.synthetic else args.model
            if model is None:
                parser.error("give a model folder, --synthetic, or --base-url and --pid")
            extra = ["--max-concurrency", str(args.max_concurrency)]
            if args.api_key:
                extra += ["--api-key", args.api_key]
            process, base_url = start_server(model, *extra, log=Path(scratch) / "server.log")
            pid = process.pid
        try:
            if args.bench:
                bench = run_bench(base_url, api_key=args.api_key)
                print(json.dumps(asdict(bench), indent=2) if args.json else bench.summary())
                return 0
            result = run_load(base_url, pid, requests=args.requests, clients=args.clients, drops=args.drops,
                              max_tokens=args.max_tokens, api_key=args.api_key)
        finally:
            if process is not None:
                process.terminate()
                process.wait(30)
    if args.json:
        print(json.dumps({**asdict(result), "ok": result.ok}, indent=2))
    else:
        print(result.summary())
        for error in result.errors[:20]:
            print(f"  {error}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
