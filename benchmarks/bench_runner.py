"""What compare_engines.py and tune_cpu.py share: the machine, its read bandwidth, running one engine.

The machine is shared (other work runs on the same cores, other tenants on the same memory), so
every engine run also reports how much CPU others used while it measured ("contention"), and the
summaries prefer the rounds where that share stayed low.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
STREAM_SOURCE = HERE / "stream_read.c"
STREAM_BINARY = OUT / "stream_read"
BANDWIDTH_BYTES = 1 << 30  # 32x the L3 cache: every pass streams from DRAM
BANDWIDTH_PASSES = 5
ENGINE_TIMEOUT_S = 1800
RESULT_MARKER = "RESULT "
READY_MARKER = "READY"
PAIRED_PAUSE_S = 0.3  # between runs: lets the previous engine's spinning threads (OpenMP) go to sleep
BANDWIDTH_SAMPLES = 5  # per thread count; the median, since a single pass can be a fluke either way
# A run during which other processes (or the hypervisor, as steal time) took more than this share
# of the cores is "contended"; summaries use the other rounds when there are any.
CONTENDED_SHARE = 0.15
GIB = 2**30
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "avx_vnni")


def cpu_busy_seconds() -> float:
    """CPU time all processes (and steal) used since boot, from /proc/stat; 0 where unavailable."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ContentionMeter:
    """Share of the machine's cores that other processes used between start() and stop()."""

    def start(self) -> None:
        self.wall, self.busy, self.own = time.perf_counter(), cpu_busy_seconds(), own_cpu_seconds()

    def stop(self) -> float:
        wall = time.perf_counter() - self.wall
        foreign = (cpu_busy_seconds() - self.busy) - (own_cpu_seconds() - self.own)
        return max(0.0, foreign / (wall * (os.cpu_count() or 1))) if wall > 0 else 0.0


QUIET_WINDOW_S = 2.0
QUIET_POLL_S = 3.0


def wait_for_quiet(max_wait_s: float, log) -> float:
    """Wait (up to max_wait_s) until other processes use under CONTENDED_SHARE of the cores.

    Nothing of ours runs meanwhile, so all CPU time the window sees is someone else's. Returns the
    last share seen. Nobody else's work is slowed down: this only picks a moment to measure.
    """
    deadline = time.monotonic() + max_wait_s
    waited = False
    while True:
        busy = cpu_busy_seconds()
        time.sleep(QUIET_WINDOW_S)
        share = (cpu_busy_seconds() - busy) / (QUIET_WINDOW_S * (os.cpu_count() or 1))
        if share <= CONTENDED_SHARE or time.monotonic() >= deadline:
            if waited:
                log(f"  machine {'quiet' if share <= CONTENDED_SHARE else 'still busy'} "
                    f"(others use {share:.0%} of the CPU)")
            return share
        waited = True
        time.sleep(QUIET_POLL_S)


def _stream_binary() -> Path | None:
    if STREAM_BINARY.is_file() and STREAM_BINARY.stat().st_mtime >= STREAM_SOURCE.stat().st_mtime:
        return STREAM_BINARY
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    OUT.mkdir(parents=True, exist_ok=True)
    built = subprocess.run([compiler, "-O3", "-march=native", "-fopenmp", str(STREAM_SOURCE), "-o",
                            str(STREAM_BINARY)], capture_output=True)
    return STREAM_BINARY if built.returncode == 0 else None


def _numpy_bandwidth(threads: int) -> float:
    """Fallback without a C compiler: numpy releases the GIL in reductions, so threads read in parallel."""
    import numpy as np

    data = np.ones(BANDWIDTH_BYTES // 8, dtype=np.int64)
    parts = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(BANDWIDTH_PASSES):
            started = time.perf_counter()
            list(pool.map(np.add.reduce, parts))
            best = min(best, time.perf_counter() - started)
    return BANDWIDTH_BYTES / best


def stream_read(threads: int, passes: int = BANDWIDTH_PASSES) -> float:
    """One bandwidth sample (bytes/s): the best of `passes` sums over 1 GiB."""
    binary = _stream_binary()
    if binary is None:
        return _numpy_bandwidth(threads)
    out = subprocess.run([str(binary), str(BANDWIDTH_BYTES), str(passes)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return float(out.stdout.strip()) * 1e9


def memory_bandwidth() -> dict[str, Any]:
    """Read bandwidth in bytes/s with one thread and with one per core: the median of several samples
    each; "best" is the better thread count."""
    results: dict[str, Any] = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        samples = [stream_read(threads) for _ in range(BANDWIDTH_SAMPLES)]
        results[f"threads_{threads}"] = statistics.median(samples)
    results["best"] = max(results.values())
    results["method"] = "stream_read.c" if _stream_binary() is not None else "numpy"
    return results


def machine() -> dict[str, Any]:
    import psutil

    cpu, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", "x86_64"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {}
    for name in ("openvino", "openvino-genai", "optimum-intel", "nncf", "transformers", "torch",
                 "llama_cpp_python"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu or "unknown", "cores": os.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
            "isa": [f for f in ISA_FLAGS if f in flags], "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "versions": versions, "date": dt.date.today().isoformat()}


def run_engine(spec, log) -> dict[str, Any] | None:
    """Run bench_engines.py on `spec` (an EngineSpec) in a fresh process; its result dict or None."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": f"{REPO}{os.pathsep}{HERE}"}
    started = time.perf_counter()
    try:
        process = subprocess.run([sys.executable, str(HERE / "bench_engines.py"), json.dumps(asdict(spec))],
                                 capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        log(f"  {spec.key}: timed out after {ENGINE_TIMEOUT_S} s")
        return None
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
            result["wall_s"] = time.perf_counter() - started
            return result
    log(f"  {spec.key}: failed (exit {process.returncode}): {process.stderr.strip()[-800:]}")
    return None


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def quiet_rounds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rounds measured while the machine was not busy with other work, or all if none was."""
    quiet = [r for r in runs if r.get("contention", 0.0) <= CONTENDED_SHARE]
    return quiet or runs


class PairedWorker:
    """A bench_engines.py --serve process: one engine loaded, running on request."""

    def __init__(self, spec: Any, log: Callable[[str], None]):
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": f"{REPO}{os.pathsep}{HERE}"}
        self.spec = spec
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "bench_engines.py"), "--serve", json.dumps(asdict(spec))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self._expect(READY_MARKER)

    def _expect(self, marker: str) -> str:
        for line in self.process.stdout:
            if line.startswith(marker):
                return line[len(marker):]
        raise RuntimeError(f"{self.spec.key}: the worker exited (code {self.process.wait()})")

    def run(self, prompt_tokens: int, gen_tokens: int) -> dict[str, Any]:
        self.process.stdin.write(f"run {prompt_tokens} {gen_tokens}\n")
        self.process.stdin.flush()
        return json.loads(self._expect(RESULT_MARKER))

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


def paired_decode(specs: list[Any], cycles: int, prompt_tokens: int, gen_tokens: int,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Alternate short decode runs of all `specs` (loaded side by side) for `cycles` cycles.

    Every cycle also takes one two-thread bandwidth sample, so each run can be set against the
    bandwidth of its own moment. Returns per-engine lists of tokens/s and the bandwidth samples.
    """
    workers = []
    try:
        for spec in specs:
            log(f"  paired: loading {spec.key}")
            workers.append(PairedWorker(spec, log))
        rates: dict[str, list[float]] = {spec.key: [] for spec in specs}
        busy: dict[str, list[float]] = {spec.key: [] for spec in specs}
        bandwidth = []
        for cycle in range(cycles):
            bandwidth.append(stream_read(os.cpu_count() or 1, passes=3))
            order = workers[cycle % len(workers):] + workers[:cycle % len(workers)]
            for worker in order:
                time.sleep(PAIRED_PAUSE_S)
                result = worker.run(prompt_tokens, gen_tokens)
                rates[worker.spec.key].append(1.0 / result["tpot_s"])
                busy[worker.spec.key].append(result["contention"])
            log(f"  paired cycle {cycle + 1}/{cycles}: bandwidth {bandwidth[-1] / 1e9:.1f} GB/s, "
                + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()))
        return {"rates": rates, "contention": busy, "bandwidth": bandwidth}
    finally:
        for worker in workers:
            worker.close()


def emit(line: str, path: Path | None) -> None:
    """Print one JSON result line and, with `path`, append it there (results survive a later crash)."""
    print(line, flush=True)
    if path:
        with path.open("a") as handle:
            handle.write(line + "\n")
