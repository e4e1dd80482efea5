"""Parallel decoding for the server: `openvino_genai.ContinuousBatchingPipeline` driven by one thread.

`LLMPipeline` decodes one request at a time (`Model` holds a lock around it). A continuous-batching
pipeline puts every running request into each `step()` and, with prefix caching, reuses the KV
blocks of a prompt prefix another request already computed. One engine thread owns the pipeline:
it adds requests, steps, and feeds each request's new token ids to its own `IncrementalDecoder`
(TextStreamer's algorithm, which LLMPipeline streams through). The requesting thread then applies
`glm_format.StopMatcher` and `ReplyParser` exactly as `Model._stream` does, so a batched answer is
the same text, chunk for chunk, as the single-stream one.

`BatchedModel` is a `Model` whose generations go through the engine instead of the lock, so
`stream`, `generate`, `chat` and `warm_up` all work unchanged and in parallel.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from . import glm_format
from .errors import Glm4EdgeError
from .loading import (
    DEFAULT_DEVICE,
    model_facts,
    open_pipeline,
    openvino_reason,
    plan_context,
    plan_load,
    size_unsafe_kv_cache,
)
from .model import BATCH_CANNOT_HONOUR, Chunk, Model
from .options import GenerationOptions, finish_reason, pipeline_reason, refuse

BATCHING_DEVICES = ("CPU", "GPU")
ENGINE_IDLE_WAIT_S = 1.0  # the engine thread sleeps on a condition; this only bounds a missed wake-up
DECODE_DELAY_TOKENS = 3  # as TextStreamer: a later token can still change how earlier ones decode
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """openvino_genai.TextStreamer's algorithm, on Python strings.

    TextStreamer itself hands its callback byte slices that can split a UTF-8 character when a model
    writes invalid byte sequences (random or badly tuned weights), and its Python binding then raises
    UnicodeDecodeError inside the engine thread. `Tokenizer.decode` replaces such bytes with U+FFFD,
    so the same algorithm over its output cannot fail, and gives the same pieces for valid text.
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._cache: list[int] = []
        self._lengths: list[int] = []  # decoded length after each cached token; -1: ended mid-character
        self._printed = 0

    def write(self, token_ids: list[int]) -> str:
        return "".join(self._one(token) for token in token_ids)

    def _one(self, token: int) -> str:
        self._cache.append(token)
        text = self._tokenizer.decode(self._cache)
        self._lengths.append(len(text))
        if text.endswith("\n") and len(text) > self._printed:  # a finished line: start afresh
            out = text[self._printed:]
            self._reset()
            return out
        if len(self._lengths) < DECODE_DELAY_TOKENS:
            return ""
        if text.endswith(REPLACEMENT_CHAR):  # an incomplete character: wait for its other bytes
            self._lengths[-1] = -1
            return ""
        until = self._lengths[-DECODE_DELAY_TOKENS]
        if until != -1 and until > self._printed:
            out = text[self._printed:until]
            self._printed = until
            return out
        return ""

    def end(self) -> str:
        text = self._tokenizer.decode(self._cache) if self._cache else ""
        out = text[self._printed:]
        self._reset()
        return out

    def _reset(self) -> None:
        self._cache, self._lengths, self._printed = [], [], 0


@dataclass
class _Done:
    perf_metrics: Any = None
    cancelled: bool = False
    error: BaseException | None = None
    ended: str | None = None  # the pipeline's finish reason: "stop" | "length" | None
    last_token: int | None = None


@dataclass
class _Request:
    id: int
    inputs: Any  # openvino.Tensor of input ids
    config: Any  # openvino_genai.GenerationConfig
    cancel: threading.Event
    stop_requested: threading.Event = field(default_factory=threading.Event)  # a stop string matched
    pieces: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # text, then one _Done
    handle: Any = None
    decoder: IncrementalDecoder | None = None
    stopping: bool = False
    ended: str | None = None
    last_token: int | None = None


class BatchingEngine:
    """Owns a ContinuousBatchingPipeline; any thread may `submit`, only the engine thread touches it."""

    def __init__(self, pipeline, tokenizer):
        import openvino_genai

        self._pipeline = pipeline
        self._tokenizer = tokenizer
        self._running_status = openvino_genai.GenerationStatus.RUNNING
        self._ids = itertools.count()
        self._pending: list[_Request] = []
        self._active: dict[int, _Request] = {}
        self._wake = threading.Condition()
        self._closed = False
        self.failure: str | None = None  # set when a step failed: the pipeline takes no more work
        self._thread = threading.Thread(target=self._run, name="glm4-edge-batching", daemon=True)
        self._thread.start()

    def submit(self, inputs, config, cancel: threading.Event | None = None) -> _Request:
        request = _Request(next(self._ids), inputs, config, cancel or threading.Event())
        with self._wake:
            if self.failure is not None:
                raise Glm4EdgeError(f"the batching engine stopped after an error ({self.failure}); "
                                    "restart the server")
            if self._closed:
                raise Glm4EdgeError("the batching engine is closed")
            self._pending.append(request)
            self._wake.notify()
        return request

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    @property
    def active(self) -> int:
        return len(self._active) + len(self._pending)

    # --- engine thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # never leave requests waiting on a dead thread
            self._fail(error)
            raise

    def _fail(self, error: BaseException) -> None:
        with self._wake:
            self.failure = openvino_reason(error)
            self._closed = True
            stranded, self._pending = [*self._active.values(), *self._pending], []
        self._active.clear()
        for request in stranded:
            request.pieces.put(_Done(error=error))

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._active and not self._closed:
                    self._wake.wait(ENGINE_IDLE_WAIT_S)
                if self._closed:
                    break
                new, self._pending = self._pending, []
            for request in new:
                self._add(request)
            for request in self._active.values():
                if not request.stopping and (request.cancel.is_set() or request.stop_requested.is_set()):
                    request.handle.stop()  # within a step: the pipeline frees its KV blocks
                    request.stopping = True
            if not self._active:
                continue
            try:
                self._pipeline.step()
            except Exception as error:
                # A failed step leaves ContinuousBatchingPipeline mid-schedule: it refuses every later
                # call. Fail what is running and queued, and refuse new work, so the server reports it.
                self._fail(error)
                return
            self._collect()
        for request in [*self._pending, *self._active.values()]:
            request.pieces.put(_Done(cancelled=True))

    def _add(self, request: _Request) -> None:
        if request.cancel.is_set():
            request.pieces.put(_Done(cancelled=True))
            return
        try:
            request.handle = self._pipeline.add_request(request.id, request.inputs, request.config)
        except Exception as error:  # e.g. a JSON schema the grammar compiler rejects
            request.pieces.put(_Done(error=error))
            return

        request.decoder = IncrementalDecoder(self._tokenizer)
        self._active[request.id] = request

    def _collect(self) -> None:
        finished = []
        for request in self._active.values():
            handle = request.handle
            try:
                if handle.can_read():
                    for output in handle.read().values():
                        ids = list(output.generated_ids)
                        request.ended = pipeline_reason(output.finish_reason) or request.ended
                        request.last_token = ids[-1] if ids else request.last_token
                        text = request.decoder.write(ids)
                        if text:
                            request.pieces.put(text)
                if handle.get_status() != self._running_status:
                    finished.append((request, None))
            except Exception as error:  # this request's output is unusable; the batch goes on
                handle.stop()
                finished.append((request, error))
        for request, error in finished:
            del self._active[request.id]
            if error is not None:
                request.pieces.put(_Done(error=error))
                continue
            if not request.stopping:
                tail = request.decoder.end()  # text held back in case the next token changed it
                if tail:
                    request.pieces.put(tail)
            request.pieces.put(_Done(perf_metrics=request.handle.get_perf_metrics(),
                                     cancelled=request.cancel.is_set(), ended=request.ended,
                                     last_token=request.last_token))


class _PipelineView:
    """What `Model` asks of its pipeline, answered by the continuous-batching one."""

    def __init__(self, pipeline):
        self._pipeline = pipeline

    def get_tokenizer(self):
        return self._pipeline.get_tokenizer()

    def get_generation_config(self):
        return self._pipeline.get_config()

    def generate(self, *args, **kwargs):
        raise Glm4EdgeError("a batched model generates through BatchedModel.stream")


class BatchedModel(Model):
    """A `Model` whose generations run side by side in a `BatchingEngine` (no per-model lock)."""

    def __init__(self, engine: BatchingEngine, *args: Any):
        super().__init__(*args)
        self.engine = engine

    def generate_batch(self, conversations, *, cancel: threading.Event | None = None, **options):  # noqa: D102
        GenerationOptions.of({k: v for k, v in options.items() if k not in ("tools", "tool_choice", "json_schema")})
        refuse("generate_batch", BATCH_CANNOT_HONOUR, {"cancel": cancel})
        return [self.generate(messages, **options) for messages in conversations]

    def _stream(self, inputs, prompt_tokens: int, config, options: GenerationOptions, tool_names: list[str],
                cancel: threading.Event | None, parse: bool = True) -> Iterator[Chunk]:
        """`Model._stream`, but fed by the engine; parse=False gives the raw text (completions)."""
        matcher = glm_format.StopMatcher(options.stop)
        parser = glm_format.ReplyParser(tool_names=tool_names, in_reasoning=self.starts_in_reasoning)
        started = time.perf_counter()
        request = self.engine.submit(inputs.input_ids, config, cancel)
        done: _Done | None = None
        try:
            while True:
                item = request.pieces.get()
                if isinstance(item, _Done):
                    done = item
                    break
                if matcher.stopped:
                    continue  # tokens decoded in the step that saw the stop string: drop them
                visible = matcher.feed(item)
                if matcher.stopped:
                    request.stop_requested.set()
                if not parse:
                    if visible:
                        yield Chunk(text=visible)
                    continue
                piece = parser.feed(visible)
                if piece.text or piece.reasoning:
                    yield Chunk(text=piece.text, reasoning=piece.reasoning)
        finally:
            if done is None:
                request.cancel.set()  # the consumer left early: the engine stops it at its next step
        if done.error is not None:
            raise done.error
        stats = self._stats(SimpleNamespace(perf_metrics=done.perf_metrics), prompt_tokens,
                            time.perf_counter() - started)
        tail, calls = glm_format.finish_answer(matcher, parser if parse else None)
        reason = finish_reason(cancelled=done.cancelled, tool_calls=bool(calls), stop_string=matcher.stopped,
                               ended=done.ended, last_token=done.last_token, stop_token_ids=self.stop_token_ids,
                               generated=stats.generated_tokens, max_new_tokens=options.max_new_tokens)
        yield Chunk(text=tail.text, reasoning=tail.reasoning, finish_reason=reason,
                    tool_calls=[c.as_dict() for c in calls] or None, stats=stats, stop_sequence=matcher.matched)

    def close(self) -> None:
        self.engine.close()


def load_batched(path: str | Path, device: str = DEFAULT_DEVICE, *, cache: bool = True,
                 warm_up: bool = False, properties: dict[str, Any] | None = None,
                 max_concurrency: int = 1) -> BatchedModel:
    """Like `glm4_edge.load`, on a ContinuousBatchingPipeline with prefix caching (CPU or GPU).

    A u4 KV cache on the CPU is sized at load for `max_concurrency` full contexts: openvino-genai
    2026.4.1 crashes regrowing one (`prefill.UNSAFE_KV_PRECISIONS`; a segfault with 4 parallel requests).
    """
    import openvino_genai

    plan = plan_load(path, device, cache=cache, properties=properties)
    if plan.base_device not in BATCHING_DEVICES:
        raise Glm4EdgeError(f"parallel decoding runs on CPU or GPU, not {plan.device}; use --max-concurrency 1")
    scheduler = openvino_genai.SchedulerConfig()
    scheduler.enable_prefix_caching = True  # requests sharing a system prompt or history reuse its KV blocks
    size_unsafe_kv_cache(plan, scheduler, plan_context(plan) * max(1, max_concurrency))
    pipeline, load_s = open_pipeline(plan, lambda: openvino_genai.ContinuousBatchingPipeline(
        str(plan.folder), scheduler, plan.device, plan.properties))
    view = _PipelineView(pipeline)
    engine = BatchingEngine(pipeline, pipeline.get_tokenizer())
    model = BatchedModel(engine, plan.folder, plan.device, view, plan.manifest, load_s, *model_facts(plan, view))
    if warm_up:
        model.warm_up()
    return model
