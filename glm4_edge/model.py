"""`Model` and `Chat`: GLM-4 over `openvino_genai.LLMPipeline`, streaming `Chunk`s.

Every face (CLI, UI, server, bench, eval) goes through `Model.stream`, so prompt rendering, stop
handling, reasoning and tool-call parsing live in one place.
"""

from __future__ import annotations

import json
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import devices, glm_format, images, prefill, prompting
from . import fallback as npu_fallback
from .errors import BadParameterError, ContextOverflowError
from .loading import (  # noqa: F401 - re-exported: `glm4_edge.model.load` and friends predate loading.py
    DEFAULT_CONTEXT,
    DEFAULT_DEVICE,
    REQUIRED_FILES,
    REQUIRED_VISION_FILES,
    LoadPlan,
    check_model_folder,
    load,
    model_facts,
    open_pipeline,
    openvino_reason,
    plan_load,
)
from .manifest import Manifest
from .options import (  # noqa: F401 - the DEFAULT_* names are re-exported for the faces
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    FINISH_REASONS,
    GenerationOptions,
    finish_reason,
    option_names,
    pipeline_reason,
    refuse,
)
from .streaming import CallbackStream
from .tool_choice import arguments_schema, choose, forced_calls, forced_prompt

if TYPE_CHECKING:
    from .conversation import Chat

# What `generate_batch` cannot do, and what to do instead: refused by name, never ignored.
BATCH_CANNOT_HONOUR = {"cancel": "a batch answers all at once; stream one conversation to cancel it"}


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started its program.

    VmHWM rather than ru_maxrss: ru_maxrss survives exec, so a process started by a big parent
    (a benchmark runner that just converted a model) would report the parent's peak as its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None  # decode rate after the first token
    prefill_tokens_per_s: float | None = None
    total_s: float | None = None
    peak_memory_bytes: int = 0
    load_s: float | None = None
    compile_s: float | None = None
    device: str = ""
    fallback: str | None = None  # why the request left the NPU for the fallback device (`device`)
    vision_encoder_s: float | None = None  # GLM-4V: image encoding time (None: no image, or cached)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """An Ollama-style one-liner."""
        parts = [f"prompt {self.prompt_tokens} tok"]
        if self.vision_encoder_s is not None:
            parts.append(f"vision {self.vision_encoder_s * 1000:.0f} ms")
        if self.ttft_s is not None:
            parts.append(f"TTFT {self.ttft_s * 1000:.0f} ms")
        parts.append(f"{self.generated_tokens} tok")
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        parts.append(f"mem {self.peak_memory_bytes / 2**30:.2f} GiB")
        if self.device:
            parts.append(self.device + (f" (fallback: {self.fallback})" if self.fallback else ""))
        return " · ".join(parts)


@dataclass
class Chunk:
    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    tool_calls: list[dict[str, str]] | None = None
    stats: GenerationStats | None = None
    progress: prefill.PrefillProgress | None = None  # set only on prefill-progress chunks of long prompts
    stop_sequence: str | None = None  # on the last chunk: the stop string that ended the answer, if one did


@dataclass
class Reply:
    text: str
    reasoning: str = ""
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    finish_reason: str = "stop"
    stats: GenerationStats = field(default_factory=GenerationStats)

    def as_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [{"type": "function", "function": dict(call)} for call in self.tool_calls]
        return message


class Model:
    """A converted GLM-4 model on one OpenVINO device. Create it with `glm4_edge.load`."""

    # NPU: the compiled prompt/answer lengths, and where requests over them go (see fallback.py).
    static_shape: npu_fallback.StaticShape | None = None
    fallback: npu_fallback.Fallback | None = None
    accepts_images = False  # GLM-4V models (glm4_edge.vision.VisionModel) take an image per conversation

    def __init__(self, path: Path, device: str, pipeline, manifest: Manifest | None, load_s: float,
                 context_length: int, generation_prefix: str, stop_token_ids: list[int]):
        self.path = path
        self.device = device
        self.pipeline = pipeline
        self.tokenizer = pipeline.get_tokenizer()
        self.manifest = manifest
        self.load_s = load_s
        self.context_length = context_length
        self.generation_prefix = generation_prefix
        self.stop_token_ids = stop_token_ids
        self._lock = threading.Lock()  # one generation at a time per pipeline
        self.assisted: str | None = None  # "draft" | "prompt_lookup": set by `load`
        reasoning = bool(manifest and manifest.reasoning) or self.starts_in_reasoning
        self.prompt_format = prompting.prompt_format(self.tokenizer, self.family, reasoning)
        # Prompts longer than this are prefilled in chunks, with progress chunks and cancel between them.
        self.prefill_threshold = prefill.DEFAULT_THRESHOLD_TOKENS
        self.prefill_first_chunk = prefill.DEFAULT_FIRST_CHUNK_TOKENS
        self.prefill_chunk_s = prefill.DEFAULT_CHUNK_S
        self.kv_cache_precision = ""  # as asked with --property KV_CACHE_PRECISION; "" = the device default
        self.kv_cache_fixed = False  # the KV cache was given its size at load and never regrows
        self.kv_cache_tokens: int | None = None  # what such a cache holds, if known: prompts beyond are refused

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.path.name

    @property
    def family(self) -> str:
        """From the manifest, or for a folder exported by other tools, its config.json's model_type."""
        if self.manifest:
            return self.manifest.family
        try:
            return str(json.loads((self.path / "config.json").read_text())["model_type"])
        except (OSError, ValueError, KeyError, TypeError):
            return "unknown"

    @property
    def busy(self) -> bool:
        """True while a generation holds the pipeline."""
        return self._lock.locked()

    @property
    def starts_in_reasoning(self) -> bool:
        return self.generation_prefix.rstrip().endswith(glm_format.THINK_OPEN)

    @property
    def weight_format(self) -> str:
        if self.manifest:
            return self.manifest.compression.weight_format
        return "format unknown (not converted by glm4-edge)"

    def describe(self) -> str:
        return f"{self.name} · {self.family} · {self.weight_format} · {self.device}"

    # --- prompt -----------------------------------------------------------------------------------

    def render(self, messages: str | Sequence[dict], tools: Sequence[dict] | None = None) -> glm_format.Prompt:
        """The prompt in this checkpoint's own template format (`prompt_format`), message text marked."""
        return glm_format.render_segments(messages, tools, self.generation_prefix, self.prompt_format)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of `prompt`, without a second `[gMASK]<sop>`.

        A rendered `glm_format.Prompt` is encoded so that its message text stays text: a user who
        types `<|assistant|>` gets the characters, not the role tag. A plain string (a raw
        /v1/completions prompt, written whole by its client) is encoded as written, tags included.
        """
        return prompting.encode(self.tokenizer, prompt)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def image_tokens_in(self, messages: Any) -> int:
        """Prompt positions an image in `messages` adds beyond their text (GLM-4V); a text-only model
        raises BadParameterError if the messages carry an image."""
        _refuse_images(self, messages, None)
        return 0

    # --- generation -------------------------------------------------------------------------------

    def stream(self, messages: str | Sequence[dict], *, tools: Sequence[dict] | None = None,
               tool_choice: Any = None, json_schema: str | None = None, cancel: threading.Event | None = None,
               **options: Any) -> Iterator[Chunk]:
        """Stream the answer to `messages` as `Chunk`s; the last one has finish_reason and stats.

        `options` are `GenerationOptions` fields (max_new_tokens, temperature, top_p, top_k,
        repetition_penalty, presence_penalty, frequency_penalty, seed, stop, ignore_eos); an unknown
        or out-of-range one raises BadParameterError naming it. `tools` are OpenAI function
        schemas; `tool_choice` is OpenAI's ("auto", "none", "required", or a function to call,
        by name or {"type": "function", "function": {"name": ...}}); `json_schema` (JSON text)
        constrains the answer through openvino-genai's structured output. Breaking out of the loop
        (or `close()`) stops generation within a token. Setting `cancel` from another thread ends
        the stream with finish_reason "cancelled".
        """
        _refuse_images(self, messages, options.pop("image", None))
        checked = GenerationOptions.of(options)
        shown, forced = _tool_plan(tools, tool_choice, json_schema)
        prompt = self.render(messages, shown)
        if forced is not None:
            raw = self._stream_checked(forced_prompt(prompt, self.generation_prefix, forced["name"]), checked,
                                       parse=False, json_schema=arguments_schema(forced), cancel=cancel)
            return forced_tool_stream(raw, forced["name"])
        return self._stream_checked(prompt, checked, tool_names=[s["name"] for s in shown], json_schema=json_schema,
                                    cancel=cancel)

    def stream_prompt(self, prompt: str, *, parse: bool = True, tool_names: Sequence[str] = (),
                      json_schema: str | None = None, cancel: threading.Event | None = None,
                      **options: Any) -> Iterator[Chunk]:
        """`stream` for a prompt already rendered. parse=False yields the model's raw text (completions);
        `json_schema` constrains the output through openvino-genai's structured output, with compact
        JSON (see `json_grammar`); a `json_grammar.ToolCallGrammar` there constrains a tool-call turn."""
        return self._stream_checked(prompt, GenerationOptions.of(options), parse=parse, tool_names=tool_names,
                                    json_schema=json_schema, cancel=cancel)

    @npu_fallback.routes_static_shape
    def _stream_checked(self, prompt: str, options: GenerationOptions, *, parse: bool = True,
                        tool_names: Sequence[str] = (), json_schema: str | None = None,
                        cancel: threading.Event | None = None) -> Iterator[Chunk]:
        ids = self.encode(prompt)
        inputs = prompting.token_inputs([ids])
        prompt_tokens = len(ids)
        max_new_tokens = options.max_new_tokens
        self._check_fits(prompt_tokens, max_new_tokens)
        config = self._generation_config(options, json_schema)
        return self._stream(inputs, prompt_tokens, config, options, list(tool_names), cancel, parse=parse)

    def _stream(self, inputs, prompt_tokens: int, config, options: GenerationOptions, tool_names: list[str],
                cancel: threading.Event | None, parse: bool = True) -> Iterator[Chunk]:
        matcher = glm_format.StopMatcher(options.stop)
        parser = glm_format.ReplyParser(tool_names=tool_names, in_reasoning=self.starts_in_reasoning)
        with self._lock:
            started = time.perf_counter()
            prefill_s = 0.0
            if self._chunked_prefill(prompt_tokens):
                for progress in prefill.fill_prefix(self.pipeline, inputs.input_ids, self._prefill_config(),
                                                    cancel, self.prefill_first_chunk, self.prefill_chunk_s):
                    prefill_s = progress.elapsed_s
                    yield Chunk(progress=progress)
                if cancel is not None and cancel.is_set():
                    stats = GenerationStats(prompt_tokens=prompt_tokens, total_s=time.perf_counter() - started,
                                            device=self.device, load_s=self.load_s, peak_memory_bytes=peak_rss_bytes())
                    yield Chunk(finish_reason="cancelled", stats=stats)
                    return
            stream = CallbackStream(lambda callback: self.pipeline.generate(inputs, config, callback), cancel)
            try:
                for raw in stream:
                    visible = matcher.feed(raw)
                    if matcher.stopped:
                        stream.stop_requested.set()
                    piece = parser.feed(visible) if parse else glm_format.ParsedPiece(text=visible)
                    if piece.text or piece.reasoning:
                        yield Chunk(text=piece.text, reasoning=piece.reasoning)
            finally:
                if stream.outcome.result is None and stream.outcome.error is None:
                    stream.close()  # the consumer left early: stop generating before releasing the lock
            tail, calls = glm_format.finish_answer(matcher, parser if parse else None)
            result = stream.outcome.result
            stats = self._stats(result, prompt_tokens, time.perf_counter() - started)
            tokens = list(result.tokens[0]) if result is not None and len(result.tokens) else []
            reasons = list(result.finish_reasons) if result is not None else []
            reason = finish_reason(cancelled=stream.outcome.cancelled, tool_calls=bool(calls),
                                   stop_string=matcher.stopped, ended=pipeline_reason(reasons[0]) if reasons else None,
                                   last_token=tokens[-1] if tokens else None, stop_token_ids=self.stop_token_ids,
                                   generated=stats.generated_tokens, max_new_tokens=options.max_new_tokens)
            if prefill_s and stats.ttft_s is not None:  # the chunks were part of reading the prompt
                stats.ttft_s += prefill_s
                stats.prefill_tokens_per_s = prompt_tokens / stats.ttft_s
            yield Chunk(text=tail.text, reasoning=tail.reasoning,
                        finish_reason=reason, tool_calls=[c.as_dict() for c in calls] or None, stats=stats,
                        stop_sequence=matcher.matched)

    def generate(self, messages: str | Sequence[dict], **options: Any) -> Reply:
        """The whole answer at once: exactly the joined text of `stream`."""
        text, reasoning, calls, reason, stats = [], [], [], "stop", GenerationStats()
        for chunk in self.stream(messages, **options):
            text.append(chunk.text)
            reasoning.append(chunk.reasoning)
            if chunk.finish_reason:
                reason, stats, calls = chunk.finish_reason, chunk.stats or stats, chunk.tool_calls or []
        return Reply("".join(text), "".join(reasoning), calls, reason, stats)

    def generate_batch(self, conversations: Sequence[str | Sequence[dict]], *, tools: Sequence[dict] | None = None,
                       tool_choice: Any = None, json_schema: str | None = None,
                       cancel: threading.Event | None = None, **options: Any) -> list[Reply]:
        """Answer several conversations in one batched `generate` call (no streaming).

        Takes `stream`'s options with the same meaning; stop strings end each answer in the
        pipeline and are cut from its text. `cancel` is refused (BadParameterError): a batch
        cannot stop part-way.
        """
        checked = GenerationOptions.of(options)
        refuse("generate_batch", BATCH_CANNOT_HONOUR, {"cancel": cancel})
        if getattr(self, "static_shape", None) is not None:
            # A static-shape (NPU) pipeline runs one sequence at a time anyway; one by one, each request
            # goes through the streaming path, which sends what does not fit the shape to the fallback.
            return [self.generate(messages, tools=tools, tool_choice=tool_choice, json_schema=json_schema,
                                  **options) for messages in conversations]
        schemas, forced = _tool_plan(tools, tool_choice, json_schema)
        prompts = [self.render(messages, schemas) for messages in conversations]
        if forced is not None:
            prompts = [forced_prompt(prompt, self.generation_prefix, forced["name"]) for prompt in prompts]
            json_schema = arguments_schema(forced)
        encoded = [self.encode(prompt) for prompt in prompts]
        lengths = [len(ids) for ids in encoded]
        max_new_tokens = checked.max_new_tokens
        for length in lengths:
            self._check_fits(length, max_new_tokens)
        config = self._generation_config(checked, json_schema, native_stop=True)
        inputs = prompting.token_inputs(encoded, self.tokenizer.get_pad_token_id())
        started = time.perf_counter()
        with self._lock:
            result = self.pipeline.generate(inputs, config)
        elapsed = time.perf_counter() - started
        replies = []
        names = [s["name"] for s in schemas]
        reasons = list(result.finish_reasons)
        for index, (tokens, prompt_tokens) in enumerate(zip(result.tokens, lengths, strict=True)):
            tokens = list(tokens)
            matcher = glm_format.StopMatcher(checked.stop)
            visible = matcher.feed(self.tokenizer.decode(tokens, skip_special_tokens=True))
            visible += "" if matcher.stopped else matcher.flush()
            if forced is not None:  # the model wrote the arguments of the call its prompt began
                call_list = forced_calls(visible, forced["name"])
                text, reasoning = "", ""  # as `tool_call_stream`: the raw arguments are never content
            else:
                parser = glm_format.ReplyParser(tool_names=names, in_reasoning=self.starts_in_reasoning)
                piece = parser.feed(visible)
                rest, calls = parser.finish()
                text, reasoning = piece.text + rest.text, piece.reasoning + rest.reasoning
                call_list = [c.as_dict() for c in calls]
            stats = GenerationStats(prompt_tokens=prompt_tokens, generated_tokens=len(tokens), total_s=elapsed,
                                    device=self.device, load_s=self.load_s)
            ended = pipeline_reason(reasons[index]) if index < len(reasons) else None
            reason = finish_reason(cancelled=False, tool_calls=bool(call_list), stop_string=matcher.stopped,
                                   ended=ended, last_token=tokens[-1] if tokens else None,
                                   stop_token_ids=self.stop_token_ids, generated=len(tokens),
                                   max_new_tokens=max_new_tokens)
            if forced is not None and not call_list:
                call_list = _partial_call(f"{forced['name']}\n{visible}", [forced["name"]], reason) or []
            replies.append(Reply(text, reasoning, call_list, reason, stats))
        return replies

    def chat(self, system: str | None = None, *, tools: Sequence[dict] | None = None,
             trim_history: bool = False, **defaults: Any) -> Chat:
        from .conversation import Chat  # it builds on this module

        return Chat(self, system=system, tools=tools, trim_history=trim_history, **defaults)

    def warm_up(self) -> None:
        """Run one short generation so the first user request does not pay for lazy initialisation."""
        for _ in self.stream("hi", max_new_tokens=2, temperature=0.0):
            pass

    # --- helpers ----------------------------------------------------------------------------------

    def _check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """ContextOverflowError unless prompt and answer fit the context and a KV cache sized at load.

        A `context_length` raised after load (Python only) can pass a u4 cache's size, which
        openvino-genai would answer with a RuntimeError mid-prefill.
        """
        limits = [limit for limit in (self.context_length, self.kv_cache_tokens) if limit]
        if limits and prompt_tokens + max_new_tokens > min(limits):
            raise ContextOverflowError(prompt_tokens, max_new_tokens, min(limits))

    def _chunked_prefill(self, prompt_tokens: int) -> bool:
        """Only pipelines with a prefix cache (CPU/GPU, no assisted decoding) can prefill in chunks.

        A u4 KV cache only if it was sized at load: each chunk regrows a dynamic cache, and openvino-genai
        2026.4.1 corrupts the heap regrowing a u4 one (`prefill.UNSAFE_KV_PRECISIONS`); such prompts are
        prefilled in one call, without progress.
        """
        return (bool(self.prefill_threshold) and prompt_tokens > self.prefill_threshold and not self.assisted
                and devices.base_device(self.device) in ("CPU", "GPU")
                and (self.kv_cache_precision not in prefill.UNSAFE_KV_PRECISIONS or self.kv_cache_fixed))

    def _prefill_config(self):
        config = self.pipeline.get_generation_config()
        config.max_new_tokens = 1
        config.do_sample = False
        config.ignore_eos = True
        config.apply_chat_template = False
        return config

    def _generation_config(self, options: GenerationOptions, json_schema: str | None = None,
                           native_stop: bool = False):
        return options.generation_config(self.pipeline.get_generation_config(), self.stop_token_ids,
                                         assisted=self.assisted, json_schema=json_schema, native_stop=native_stop)

    def _stats(self, result, prompt_tokens: int, total_s: float) -> GenerationStats:
        stats = GenerationStats(prompt_tokens=prompt_tokens, total_s=total_s, load_s=self.load_s,
                                device=self.device,
                                peak_memory_bytes=peak_rss_bytes())
        metrics = getattr(result, "perf_metrics", None)
        if metrics is None:
            return stats
        stats.generated_tokens = int(metrics.get_num_generated_tokens())
        ttft_ms = metrics.get_ttft().mean
        if ttft_ms > 0:
            stats.ttft_s = ttft_ms / 1000
            stats.prefill_tokens_per_s = prompt_tokens / stats.ttft_s
        tpot_ms = metrics.get_tpot().mean
        if tpot_ms > 0 and stats.generated_tokens > 1:
            stats.tokens_per_s = 1000.0 / tpot_ms
        return stats


def _refuse_images(model: Model, messages: Any, image: Any) -> None:
    """A text-only model given an image (argument, message key or content part): one clear error."""
    carried = image is not None or (not isinstance(messages, str) and any(
        isinstance(m, dict) and (m.get("image") is not None or (isinstance(m.get("content"), list) and any(
            isinstance(p, dict) and p.get("type") in images.IMAGE_PART_TYPES for p in m["content"])))
        for m in messages or []))
    if carried:
        raise BadParameterError(f"{model.name} is a text-only model and cannot see images; convert a GLM-4V "
                                "checkpoint (THUDM/glm-4v-9b) for image chat", "image")


def _tool_plan(tools: Sequence[dict] | None, tool_choice: Any,
               json_schema: str | None) -> tuple[list[dict], dict | None]:
    """(function schemas to show, the one the model must call or None); see `tool_choice.choose`."""
    shown, forced = choose(tool_choice, glm_format.tool_schemas(tools))
    if forced is not None and json_schema is not None:
        raise BadParameterError("json_schema cannot go with a tool_choice that forces a call: the call's arguments "
                                "follow the tool's parameters schema", "json_schema")
    return shown, forced


def forced_tool_stream(raw: Iterator[Chunk], name: str) -> Iterator[Chunk]:
    """`raw` continues a prompt that already names `name`: what it writes are the call's JSON arguments."""
    return tool_call_stream(raw, [name], prefix=f"{name}\n")


def tool_call_stream(raw: Iterator[Chunk], names: list[str], prefix: str = "") -> Iterator[Chunk]:
    """Raw constrained text -> one final chunk with the call (`prefix` is what the prompt already wrote).

    Cut off by max_new_tokens before the call is whole, the answer is finish_reason "length" with the
    partial call, as OpenAI answers it: the function's name and the arguments written so far (not JSON
    yet). Cut by a stop string or a cancel, it keeps that finish reason and carries no call. Either way
    the model's raw `name\n{...` text is never shown as content.
    """
    text = []
    try:
        for chunk in raw:
            text.append(chunk.text)
            if chunk.finish_reason:
                written = prefix + "".join(text)
                calls = glm_format.parse_tool_calls(written, names)
                if calls and chunk.finish_reason != "cancelled":
                    yield Chunk(finish_reason="tool_calls", tool_calls=[c.as_dict() for c in calls[:1]],
                                stats=chunk.stats)
                else:
                    yield Chunk(finish_reason=chunk.finish_reason, tool_calls=_partial_call(written, names,
                                                                                              chunk.finish_reason),
                                stats=chunk.stats, stop_sequence=chunk.stop_sequence)
    finally:
        raw.close()  # type: ignore[attr-defined]


def _partial_call(written: str, names: Sequence[str], reason: str | None) -> list[dict[str, str]] | None:
    """A call cut by the token limit: its name and the arguments so far (OpenAI's "length" answer)."""
    name, newline, arguments = written.partition("\n")
    return [{"name": name, "arguments": arguments}] if reason == "length" and newline and name in names else None
