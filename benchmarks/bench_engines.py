"""One engine, one process: load a model, warm up, measure decode and TTFT, print JSON.

    python benchmarks/bench_engines.py '{"key": "edge-int4-cpu", "kind": "edge", "path": "...", ...}'
    python benchmarks/bench_engines.py --serve '{...}'     # paired mode, see serve()

`compare_engines.py` runs this once per engine per round, so every engine starts from a clean
process (its peak RSS is its own, and a crash or a leak cannot skew the next engine). Engines:

    edge     glm4_edge.load + Model.stream (the product path), prompts as text of exact token length
    genai    raw openvino_genai.LLMPipeline.generate on token ids with a callback streamer
    optimum  optimum-intel OVModelForCausalLM.generate
    torch    transformers AutoModelForCausalLM (bf16) .generate
    llama    llama-cpp-python on a GGUF (decode and prefill timings from llama.cpp's own counters)

Every engine decodes greedily with EOS ignored, so each run produces exactly the tokens asked for.
Prompts are fresh random tokens every run, so no engine's prefix cache can shortcut a prefill.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench_runner import READY_MARKER, RESULT_MARKER, ContentionMeter

from glm4_edge.model import peak_rss_bytes

# Token ids for random prompts: the synthetic tokenizer's ordinary (non-special) tokens.
PROMPT_ID_RANGE = (0, 600)
WARMUP_GEN_TOKENS = 4
WARMUP_PROMPT_TOKENS = 32
LLAMA_BATCH = 512


@dataclass
class EngineSpec:
    key: str
    kind: str  # edge | genai | optimum | torch | llama
    path: str
    label: str = ""
    properties: dict[str, Any] = field(default_factory=dict)  # pipeline properties (edge, genai)
    threads: int = 0  # 0: the engine's default
    prompt_lengths: list[int] = field(default_factory=lambda: [128, 512, 1024])
    decode_prompt: int = 128
    gen_tokens: int = 64
    seed: int = 0
    context: int = 4096
    generation: dict[str, Any] = field(default_factory=dict)  # extra GenerationConfig fields (genai)


@dataclass
class Timing:
    ttft_s: float
    tpot_s: float | None
    generated: int


@dataclass
class Measurement:
    key: str
    load_s: float
    decode: Timing
    ttft_s: dict[str, float]  # prompt length -> seconds
    peak_rss: int
    contention: float  # share of the cores other processes used while this engine measured
    notes: list[str] = field(default_factory=list)


class Engine:
    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.notes: list[str] = []

    def load(self) -> None:
        raise NotImplementedError

    def run(self, prompt_tokens: int, gen_tokens: int) -> Timing:
        raise NotImplementedError

    def random_ids(self, count: int) -> list[int]:
        return [self.rng.randrange(*PROMPT_ID_RANGE) for _ in range(count)]


class EdgeEngine(Engine):
    """glm4-edge exactly as users run it: Model.stream on a chat prompt."""

    def load(self) -> None:
        import glm4_edge
        from glm4_edge.bench import PromptMaker

        properties = dict(self.spec.properties)
        lookup = bool(properties.pop("prompt_lookup", False))  # a load option: it also sets the n-gram size
        self.model = glm4_edge.load(self.spec.path, "CPU", prompt_lookup=lookup, properties=properties)
        self.maker = PromptMaker(self.model, self.spec.seed)

    def run(self, prompt_tokens: int, gen_tokens: int) -> Timing:
        from glm4_edge.bench import run_once

        result = run_once(self.model, self.maker.make(prompt_tokens), gen_tokens) if gen_tokens > 1 else None
        if result is None:  # one token: only TTFT is defined, which stats report without a decode rate
            stats = None
            for chunk in self.model.stream(self.maker.make(prompt_tokens), max_new_tokens=1, temperature=0.0,
                                           ignore_eos=True):
                stats = chunk.stats or stats
            return Timing(stats.ttft_s, None, stats.generated_tokens)
        return Timing(result.ttft_s, result.tpot_s, result.generated_tokens)


class GenaiEngine(Engine):
    """Raw openvino-genai, as its samples use it: LLMPipeline(folder, "CPU").generate(..., streamer)."""

    def load(self) -> None:
        import openvino_genai

        self.genai = openvino_genai
        properties = dict(self.spec.properties)
        if properties.pop("scheduler_prefix_caching", None) is not None:
            scheduler = openvino_genai.SchedulerConfig()
            scheduler.enable_prefix_caching = True
            properties["scheduler_config"] = scheduler
        self.pipe = openvino_genai.LLMPipeline(self.spec.path, "CPU", **properties)

    def run(self, prompt_tokens: int, gen_tokens: int) -> Timing:
        import numpy as np
        import openvino as ov

        ids = np.array([self.random_ids(prompt_tokens)], dtype=np.int64)
        inputs = self.genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        config = self.pipe.get_generation_config()
        config.max_new_tokens = gen_tokens
        config.ignore_eos = True
        config.do_sample = False
        config.apply_chat_template = False
        for name, value in self.spec.generation.items():
            setattr(config, name, value)
        running = self.genai.StreamingStatus.RUNNING
        result = self.pipe.generate(inputs, config, lambda text: running)
        metrics = result.perf_metrics
        generated = int(metrics.get_num_generated_tokens())
        tpot = metrics.get_tpot().mean / 1000 if generated > 1 else None
        return Timing(metrics.get_ttft().mean / 1000, tpot, generated)


class TimingStreamer:
    """A transformers streamer that only timestamps tokens (the first put() is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class HfEngine(Engine):
    """optimum-intel's OVModelForCausalLM or PyTorch, both through transformers' generate()."""

    def load(self) -> None:
        import torch

        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        self.torch = torch
        if self.spec.kind == "optimum":
            from optimum.intel import OVModelForCausalLM

            self.model = OVModelForCausalLM.from_pretrained(self.spec.path, device="CPU",
                                                            ov_config=dict(self.spec.properties) or None)
        else:
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(self.spec.path, dtype=torch.bfloat16)
            self.model.eval()

    def run(self, prompt_tokens: int, gen_tokens: int) -> Timing:
        ids = self.torch.tensor([self.random_ids(prompt_tokens)], dtype=self.torch.long)
        streamer = TimingStreamer()
        started = time.perf_counter()
        with self.torch.inference_mode():
            self.model.generate(ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=gen_tokens,
                                min_new_tokens=gen_tokens, do_sample=False, streamer=streamer,
                                pad_token_id=0)
        times = streamer.times
        tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
        return Timing(times[0] - started, tpot, len(times))


class LlamaEngine(Engine):
    """llama.cpp through llama-cpp-python; timings from llama.cpp's perf counters (no Python in them)."""

    def load(self) -> None:
        import llama_cpp

        self.llama_cpp = llama_cpp
        threads = self.spec.threads or os.cpu_count() or 1
        self.llm = llama_cpp.Llama(model_path=self.spec.path, n_ctx=self.spec.context, n_threads=threads,
                                   n_threads_batch=threads, n_batch=LLAMA_BATCH, n_ubatch=LLAMA_BATCH,
                                   verbose=False, **self.spec.properties)

    def _next_token(self) -> int:
        import numpy as np

        logits = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(self.llm.n_vocab(),))))

    def run(self, prompt_tokens: int, gen_tokens: int) -> Timing:
        llm, ctx = self.llm, self.llm.ctx
        llm.reset()
        self.llama_cpp.llama_perf_context_reset(ctx)
        started = time.perf_counter()
        llm.eval(self.random_ids(prompt_tokens))
        token = self._next_token()
        ttft = time.perf_counter() - started
        for _ in range(gen_tokens - 1):
            llm.eval([token])
            token = self._next_token()
        perf = self.llama_cpp.llama_perf_context(ctx)
        tpot = perf.t_eval_ms / 1000 / perf.n_eval if perf.n_eval else None
        return Timing(ttft, tpot, gen_tokens)


ENGINES = {"edge": EdgeEngine, "genai": GenaiEngine, "optimum": HfEngine, "torch": HfEngine,
           "llama": LlamaEngine}


def measure(spec: EngineSpec) -> Measurement:
    engine = ENGINES[spec.kind](spec)
    started = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - started
    engine.run(min(WARMUP_PROMPT_TOKENS, spec.decode_prompt), WARMUP_GEN_TOKENS)
    meter = ContentionMeter()
    meter.start()
    decode = engine.run(spec.decode_prompt, spec.gen_tokens)
    ttft = {}
    for length in spec.prompt_lengths:
        ttft[str(length)] = decode.ttft_s if length == spec.decode_prompt else engine.run(length, 1).ttft_s
    contention = meter.stop()
    peak = peak_rss_bytes()
    return Measurement(spec.key, load_s, decode, ttft, peak, contention, engine.notes)


def serve(spec: EngineSpec) -> None:
    """Paired mode: load once, then answer `run PROMPT GEN` lines from the parent until `quit`.

    The parent alternates short runs of several such workers, so slow changes of the machine
    (other tenants of the memory system, other jobs) hit every engine alike.
    """
    engine = ENGINES[spec.kind](spec)
    engine.load()
    engine.run(min(WARMUP_PROMPT_TOKENS, spec.decode_prompt), WARMUP_GEN_TOKENS)
    print(READY_MARKER, flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        meter = ContentionMeter()
        meter.start()
        timing = engine.run(int(words[1]), int(words[2]))
        print(RESULT_MARKER + json.dumps({**asdict(timing), "contention": meter.stop()}), flush=True)


def main() -> int:
    spec = EngineSpec(**json.loads(sys.argv[-1]))
    if "--serve" in sys.argv[1:-1]:
        serve(spec)
        return 0
    result = measure(spec)
    print(RESULT_MARKER + json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
