"""Benchmark one converted model: load and compile time, TTFT, decode rate, prefill rate, memory.

Every run gets a fresh random prompt of exactly the requested length (rendered chat template
included), so the pipeline's prefix cache cannot turn a prefill into a lookup, and generation
ignores EOS so every run decodes the same number of tokens. Timings come from openvino-genai's own
perf metrics (TTFT, TPOT), taken through `Model.stream` like every other face of the package.
"""

from __future__ import annotations

import gc
import random
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .devices import base_device
from .errors import BadParameterError, ContextOverflowError
from .loading import load
from .model import Model, peak_rss_bytes

DEFAULT_PROMPT_TOKENS = 1024
DEFAULT_GEN_TOKENS = 128
DEFAULT_RUNS = 5
DEFAULT_WARMUP = 1
MAX_RUNS = 1000
# The warm-up prefills a full-length prompt (first-call allocations scale with it) but decodes
# only a few tokens: decode kernels are already compiled after the first token.
WARMUP_GEN_TOKENS = 4
# Tokens sampled for prompt text: skip anything that looks like a control token, which the
# tokenizer would parse as one special id instead of text.
SPECIAL_LOOKING = re.compile(r"^\s*(<\|.*\|>|\[.*\]|<[a-z/]+>)\s*$")
FALLBACK_LETTERS = "abcdefghijklmnopqrstuvwxyz"
FALLBACK_WORD_LEN = (2, 9)
BYTES_PER_GIB = 2**30
Progress = Callable[[str], None]


@dataclass
class Spread:
    """One metric over the measured runs."""

    median: float
    mean: float
    min: float
    max: float
    stdev: float
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = [float(v) for v in values]
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), [])
        return cls(statistics.median(values), statistics.fmean(values), min(values), max(values),
                   statistics.stdev(values) if len(values) > 1 else 0.0, values)

    @property
    def relative_spread(self) -> float:
        """(max - min) / median: how much the runs disagree."""
        return (self.max - self.min) / self.median if self.median else 0.0


@dataclass
class LoadTimes:
    first_s: float  # nothing cached yet (on GPU/NPU: an empty compile cache)
    second_s: float  # same model again: compile cache hit on GPU/NPU, page cache only on CPU
    cache: str  # what the second load could reuse


@dataclass
class RunResult:
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float
    tpot_s: float
    tokens_per_s: float
    prefill_tokens_per_s: float
    wall_s: float  # model.stream from call to last chunk, detokenization and streaming included


@dataclass
class BenchOptions:
    model: Path
    device: str = "CPU"
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    gen_tokens: int = DEFAULT_GEN_TOKENS
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    seed: int = 0
    draft: Path | None = None
    prompt_lookup: bool = False
    max_prompt_len: int | None = None
    min_response_len: int | None = None
    cache: bool = True
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchResult:
    model: str
    description: str
    device: str
    prompt_tokens: int
    gen_tokens: int
    runs: int
    load: LoadTimes
    ttft: Spread  # seconds
    tpot: Spread  # seconds per decoded token after the first
    tokens_per_s: Spread  # decode rate
    prefill_tokens_per_s: Spread
    wall: Spread  # seconds per run, end to end
    peak_memory: int  # bytes: the process's peak resident set, load included
    properties: dict[str, str] = field(default_factory=dict)
    per_run: list[RunResult] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=lambda: {
        "ttft": "s", "tpot": "s", "tokens_per_s": "tokens/s", "prefill_tokens_per_s": "tokens/s",
        "wall": "s", "peak_memory": "bytes", "load": "s"})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """Ollama `--verbose` style, with the median over runs and the min-max range."""
        def seconds(spread: Spread) -> str:
            return f"{_duration(spread.median)}  (min {_duration(spread.min)}, max {_duration(spread.max)})"

        def rate(spread: Spread) -> str:
            return (f"{spread.median:.2f} tokens/s  (min {spread.min:.2f}, max {spread.max:.2f}, "
                    f"spread {spread.relative_spread:.1%})")

        lines = [
            ("model", self.description),
            ("runs", f"{self.runs} (median shown; fresh prompt each run)"),
            ("load duration", f"{_duration(self.load.first_s)} first, {_duration(self.load.second_s)} second "
                              f"({self.load.cache})"),
            ("prompt eval count", f"{self.prompt_tokens} token(s)"),
            ("prompt eval duration", seconds(self.ttft) + "  = time to first token"),
            ("prompt eval rate", rate(self.prefill_tokens_per_s)),
            ("eval count", f"{self.gen_tokens} token(s)"),
            ("eval duration", f"{_duration(self.tpot.median * max(self.gen_tokens - 1, 0))}  "
                              f"({self.tpot.median * 1000:.1f} ms per token)"),
            ("eval rate", rate(self.tokens_per_s)),
            ("total duration", seconds(self.wall)),
            ("peak memory", f"{self.peak_memory / BYTES_PER_GIB:.2f} GiB"),
        ]
        if self.properties:
            lines.append(("properties", ", ".join(f"{k}={v}" for k, v in self.properties.items())))
        width = max(len(name) for name, _ in lines) + 2
        return "\n".join(f"{name + ':':<{width}}{value}" for name, value in lines)


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def validate(options: BenchOptions) -> None:
    """Refuse impossible settings before paying for a model load."""
    if not 1 <= options.runs <= MAX_RUNS:
        raise BadParameterError(f"--runs {options.runs} must be between 1 and {MAX_RUNS}", "runs")
    if options.warmup < 0:
        raise BadParameterError(f"--warmup {options.warmup} must be 0 or more", "warmup")
    if options.gen_tokens < 2:
        raise BadParameterError(f"--gen-tokens {options.gen_tokens} must be at least 2 (decode speed is "
                                "measured after the first token)", "gen_tokens")
    if options.prompt_tokens < 1:
        raise BadParameterError(f"--prompt-tokens {options.prompt_tokens} must be at least 1",
                                "prompt_tokens")


def check_fits(model: Model, prompt_tokens: int, gen_tokens: int) -> None:
    overhead = model.count_tokens(model.render(""))
    if prompt_tokens <= overhead:
        raise BadParameterError(f"--prompt-tokens {prompt_tokens} is too short: the chat template alone "
                                f"takes {overhead} tokens; ask for at least {overhead + 1}", "prompt_tokens")
    if model.context_length and prompt_tokens + gen_tokens > model.context_length:
        raise ContextOverflowError(prompt_tokens, gen_tokens, model.context_length)


class PromptMaker:
    """Random text whose rendered chat prompt is exactly (or, rarely, one under) `tokens` long."""

    def __init__(self, model: Model, seed: int):
        self.model = model
        self.rng = random.Random(seed)
        self.words = self._vocabulary_words()

    def _vocabulary_words(self) -> list[str]:
        try:
            vocab = self.model.tokenizer.get_vocab()
        except (RuntimeError, AttributeError):  # a tokenizer without a vocabulary table
            return []
        words = []
        for raw in vocab:
            try:
                text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError:
                continue  # a byte fragment of a multi-byte character
            if text.strip() and text.isprintable() and not SPECIAL_LOOKING.match(text):
                words.append(text)
        return sorted(words)

    def _word(self) -> str:
        if self.words:
            return self.rng.choice(self.words)
        low, high = FALLBACK_WORD_LEN
        return " " + "".join(self.rng.choice(FALLBACK_LETTERS) for _ in range(self.rng.randint(low, high)))

    def _count(self, text: str) -> int:
        return self.model.count_tokens(self.model.render(text))

    def make(self, tokens: int) -> str:
        text = ""
        count = self._count(text)
        while count < tokens:  # grow by about the missing number of tokens
            text += "".join(self._word() for _ in range(max(tokens - count, 1)))
            count = self._count(text)
        low, high = 0, len(text)  # the longest prefix that still fits: token counts grow with length
        while low < high:
            middle = (low + high + 1) // 2
            if self._count(text[:middle]) <= tokens:
                low = middle
            else:
                high = middle - 1
        return text[:low]


def _load(options: BenchOptions, properties: dict[str, Any]) -> Model:
    return load(options.model, options.device, max_prompt_len=options.max_prompt_len,
                min_response_len=options.min_response_len, cache=options.cache, draft=options.draft,
                prompt_lookup=options.prompt_lookup, properties=properties,
                fallback_device=None)  # a request over the NPU's shape must fail, not time the CPU


def measure_loads(options: BenchOptions) -> tuple[Model, LoadTimes]:
    """Load twice; keep the second model. GPU/NPU compile into a fresh cache so the first load is cold."""
    base = base_device(options.device)
    properties = dict(options.properties)
    scratch = None
    if options.cache and base in ("GPU", "NPU", "AUTO") and "CACHE_DIR" not in properties:
        scratch = Path(tempfile.mkdtemp(prefix="glm4-edge-bench-cache-"))
        properties["CACHE_DIR"] = str(scratch)
    try:
        model = _load(options, properties)
        first = model.load_s
        del model
        gc.collect()
        model = _load(options, properties)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    cache = ("compile cache" if "CACHE_DIR" in properties else "page cache only; no compile cache"
             if base == "CPU" else "no compile cache")
    return model, LoadTimes(first, model.load_s, cache)


def run_once(model: Model, prompt: str, gen_tokens: int) -> RunResult:
    started = time.perf_counter()
    stats = None
    for chunk in model.stream(prompt, max_new_tokens=gen_tokens, temperature=0.0, ignore_eos=True):
        if chunk.stats is not None:
            stats = chunk.stats
    wall = time.perf_counter() - started
    if stats is None or stats.ttft_s is None or not stats.tokens_per_s:
        raise RuntimeError("the pipeline returned no performance metrics")
    return RunResult(stats.prompt_tokens, stats.generated_tokens, stats.ttft_s, 1.0 / stats.tokens_per_s,
                     stats.tokens_per_s, stats.prefill_tokens_per_s or 0.0, wall)


def bench(options: BenchOptions, progress: Progress | None = None) -> BenchResult:
    progress = progress or (lambda message: None)
    validate(options)
    progress(f"loading {options.model} on {options.device} (twice: first and second load)")
    model, loads = measure_loads(options)
    check_fits(model, options.prompt_tokens, options.gen_tokens)
    maker = PromptMaker(model, options.seed)
    for index in range(options.warmup):
        progress(f"warm-up {index + 1}/{options.warmup}")
        run_once(model, maker.make(options.prompt_tokens), min(WARMUP_GEN_TOKENS, options.gen_tokens))
    runs = []
    for index in range(options.runs):
        prompt = maker.make(options.prompt_tokens)
        progress(f"run {index + 1}/{options.runs}")
        runs.append(run_once(model, prompt, options.gen_tokens))
    peak = peak_rss_bytes()
    return BenchResult(
        model=str(options.model), description=model.describe(), device=model.device,
        prompt_tokens=int(statistics.median(r.prompt_tokens for r in runs)),
        gen_tokens=int(statistics.median(r.generated_tokens for r in runs)), runs=len(runs), load=loads,
        ttft=Spread.of([r.ttft_s for r in runs]), tpot=Spread.of([r.tpot_s for r in runs]),
        tokens_per_s=Spread.of([r.tokens_per_s for r in runs]),
        prefill_tokens_per_s=Spread.of([r.prefill_tokens_per_s for r in runs]),
        wall=Spread.of([r.wall_s for r in runs]), peak_memory=peak,
        properties={k: str(v) for k, v in options.properties.items()}, per_run=runs)
