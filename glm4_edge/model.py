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
from typing import Any

from . import devices, glm_format, json_grammar, prompting
from .errors import BadParameterError, ContextOverflowError, Glm4EdgeError, ModelFormatError
from .manifest import Manifest, read_manifest
from .streaming import CallbackStream

DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.8
DEFAULT_DEVICE = "CPU"
DEFAULT_CONTEXT = 8192
# Tokens proposed per step by a draft model or prompt lookup, and the n-gram prompt lookup matches.
DEFAULT_ASSISTANT_TOKENS = 5
DEFAULT_LOOKUP_NGRAM = 3
REQUIRED_FILES = ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml")
FINISH_REASONS = ("stop", "length", "tool_calls", "cancelled")


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """An Ollama-style one-liner."""
        parts = [f"prompt {self.prompt_tokens} tok"]
        if self.ttft_s is not None:
            parts.append(f"TTFT {self.ttft_s * 1000:.0f} ms")
        parts.append(f"{self.generated_tokens} tok")
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        parts.append(f"mem {self.peak_memory_bytes / 2**30:.2f} GiB")
        if self.device:
            parts.append(self.device)
        return " · ".join(parts)


@dataclass
class Chunk:
    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    tool_calls: list[dict[str, str]] | None = None
    stats: GenerationStats | None = None


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

    # --- generation -------------------------------------------------------------------------------

    def stream(self, messages: str | Sequence[dict], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P, top_k: int = 0,
               repetition_penalty: float = 1.0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
               seed: int | None = None, stop: str | Sequence[str] | None = None, ignore_eos: bool = False,
               tools: Sequence[dict] | None = None, cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """Stream the answer to `messages` as `Chunk`s; the last one has finish_reason and stats.

        Breaking out of the loop (or `close()`) stops generation within a token. Setting `cancel`
        from another thread ends the stream with finish_reason "cancelled".
        """
        schemas = glm_format.tool_schemas(tools)
        return self.stream_prompt(
            self.render(messages, schemas), tool_names=[s["name"] for s in schemas], max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, seed=seed, stop=stop,
            ignore_eos=ignore_eos, cancel=cancel)

    def stream_prompt(self, prompt: str, *, parse: bool = True, tool_names: Sequence[str] = (),
                      json_schema: str | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                      temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P, top_k: int = 0,
                      repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
                      frequency_penalty: float = 0.0, seed: int | None = None,
                      stop: str | Sequence[str] | None = None, ignore_eos: bool = False,
                      cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """`stream` for a prompt already rendered. parse=False yields the model's raw text (completions);
        `json_schema` constrains the output through openvino-genai's structured output, with compact
        JSON (see `json_grammar`); a `json_grammar.ToolCallGrammar` there constrains a tool-call turn."""
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        ids = self.encode(prompt)
        inputs = prompting.token_inputs([ids])
        prompt_tokens = len(ids)
        if max_new_tokens < 1:
            raise BadParameterError(f"max_new_tokens must be at least 1, got {max_new_tokens}", "max_new_tokens")
        if self.context_length and prompt_tokens + max_new_tokens > self.context_length:
            raise ContextOverflowError(prompt_tokens, max_new_tokens, self.context_length)
        config = self._generation_config(max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                                         presence_penalty, frequency_penalty, seed, ignore_eos)
        if json_schema is not None:  # a JSON schema's text, or a json_grammar.ToolCallGrammar
            config.structured_output_config = json_grammar.output_config(json_schema)
        return self._stream(inputs, prompt_tokens, config, stops, list(tool_names), cancel, parse=parse)

    def _stream(self, inputs, prompt_tokens: int, config, stops: list[str], tool_names: list[str],
                cancel: threading.Event | None, parse: bool = True) -> Iterator[Chunk]:
        matcher = glm_format.StopMatcher(stops)
        parser = glm_format.ReplyParser(tool_names=tool_names, in_reasoning=self.starts_in_reasoning)
        with self._lock:
            started = time.perf_counter()
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
            tail_text = matcher.flush() if not matcher.stopped else ""
            if parse:
                tail = parser.feed(tail_text)
                rest, calls = parser.finish()
            else:
                tail, rest, calls = glm_format.ParsedPiece(text=tail_text), glm_format.ParsedPiece(), []
            stats = self._stats(stream.outcome.result, prompt_tokens, time.perf_counter() - started)
            reason = finish_reason(stream.outcome.cancelled, bool(calls), matcher.stopped, stats, config)
            yield Chunk(text=tail.text + rest.text, reasoning=tail.reasoning + rest.reasoning,
                        finish_reason=reason, tool_calls=[c.as_dict() for c in calls] or None, stats=stats)

    def generate(self, messages: str | Sequence[dict], **options: Any) -> Reply:
        """The whole answer at once: exactly the joined text of `stream`."""
        text, reasoning, calls, reason, stats = [], [], [], "stop", GenerationStats()
        for chunk in self.stream(messages, **options):
            text.append(chunk.text)
            reasoning.append(chunk.reasoning)
            if chunk.finish_reason:
                reason, stats, calls = chunk.finish_reason, chunk.stats or stats, chunk.tool_calls or []
        return Reply("".join(text), "".join(reasoning), calls, reason, stats)

    def generate_batch(self, conversations: Sequence[str | Sequence[dict]], *,
                       max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = DEFAULT_TEMPERATURE,
                       top_p: float = DEFAULT_TOP_P, repetition_penalty: float = 1.0, seed: int | None = None,
                       tools: Sequence[dict] | None = None) -> list[Reply]:
        """Answer several conversations in one batched `generate` call (no streaming)."""
        schemas = glm_format.tool_schemas(tools)
        encoded = [self.encode(self.render(messages, schemas)) for messages in conversations]
        lengths = [len(ids) for ids in encoded]
        for length in lengths:
            if self.context_length and length + max_new_tokens > self.context_length:
                raise ContextOverflowError(length, max_new_tokens, self.context_length)
        config = self._generation_config(max_new_tokens, temperature, top_p, 0, repetition_penalty, 0.0, 0.0,
                                         seed, False)
        inputs = prompting.token_inputs(encoded, self.tokenizer.get_pad_token_id())
        started = time.perf_counter()
        with self._lock:
            result = self.pipeline.generate(inputs, config)
        elapsed = time.perf_counter() - started
        replies = []
        names = [s["name"] for s in schemas]
        for tokens, prompt_tokens in zip(result.tokens, lengths, strict=True):
            parser = glm_format.ReplyParser(tool_names=names, in_reasoning=self.starts_in_reasoning)
            piece = parser.feed(self.tokenizer.decode(tokens, skip_special_tokens=True))
            rest, calls = parser.finish()
            stats = GenerationStats(prompt_tokens=prompt_tokens, generated_tokens=len(tokens), total_s=elapsed,
                                    device=self.device, load_s=self.load_s)
            stop_hit = any(t in self.stop_token_ids for t in tokens[-1:])
            reason = "tool_calls" if calls else ("length" if len(tokens) >= max_new_tokens and not stop_hit
                                                 else "stop")
            replies.append(Reply(piece.text + rest.text, piece.reasoning + rest.reasoning,
                                 [c.as_dict() for c in calls], reason, stats))
        return replies

    def chat(self, system: str | None = None, *, tools: Sequence[dict] | None = None,
             trim_history: bool = False, **defaults: Any) -> Chat:
        return Chat(self, system=system, tools=tools, trim_history=trim_history, **defaults)

    def warm_up(self) -> None:
        """Run one short generation so the first user request does not pay for lazy initialisation."""
        for _ in self.stream("hi", max_new_tokens=2, temperature=0.0):
            pass

    # --- helpers ----------------------------------------------------------------------------------

    def _generation_config(self, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                           presence_penalty, frequency_penalty, seed, ignore_eos):
        for name, value, low, high in (("temperature", temperature, 0.0, 100.0), ("top_p", top_p, 0.0, 1.0),
                                       ("repetition_penalty", repetition_penalty, 0.0, 100.0),
                                       ("presence_penalty", presence_penalty, -2.0, 2.0),
                                       ("frequency_penalty", frequency_penalty, -2.0, 2.0)):
            if not isinstance(value, (int, float)) or not low <= value <= high or (name == "top_p" and value == 0):
                raise BadParameterError(f"{name} must be in [{low}, {high}]" + (" and above 0" if name == "top_p"
                                                                                  else "") + f", got {value}", name)
        if repetition_penalty == 0:
            raise BadParameterError("repetition_penalty must be above 0", "repetition_penalty")
        config = self.pipeline.get_generation_config()
        config.max_new_tokens = int(max_new_tokens)
        config.stop_token_ids = set(self.stop_token_ids)
        config.ignore_eos = bool(ignore_eos)
        config.repetition_penalty = float(repetition_penalty)
        config.presence_penalty = float(presence_penalty)
        config.frequency_penalty = float(frequency_penalty)
        config.apply_chat_template = False
        if self.assisted:  # speculative decoding or prompt lookup must be told how far to guess
            config.num_assistant_tokens = DEFAULT_ASSISTANT_TOKENS
            if self.assisted == "prompt_lookup":
                config.max_ngram_size = DEFAULT_LOOKUP_NGRAM
        if temperature == 0:
            config.do_sample = False
        else:
            config.do_sample = True
            config.temperature = float(temperature)
            config.top_p = float(top_p)
            config.top_k = int(top_k) if top_k else 0
            if seed is not None:
                config.rng_seed = int(seed)
        return config

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


def finish_reason(cancelled: bool, tool_calls: bool, stop_string: bool, stats: GenerationStats, config) -> str:
    if cancelled:
        return "cancelled"
    if tool_calls:
        return "tool_calls"
    if not stop_string and stats.generated_tokens >= config.max_new_tokens:
        return "length"
    return "stop"


class Chat:
    """A conversation: `send` streams like `Model.stream` and records the turn in `messages`."""

    def __init__(self, model: Model, system: str | None = None, tools: Sequence[dict] | None = None,
                 trim_history: bool = False, **defaults: Any):
        self.model = model
        self.system = system
        self.tools = list(tools or [])
        self.trim_history = trim_history
        self.defaults = defaults
        self.messages: list[dict[str, Any]] = []
        self.last_stats: GenerationStats | None = None
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def add_tool_result(self, content: Any, name: str | None = None) -> None:
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        message = {"role": "tool", "content": content}
        if name:
            message["name"] = name
        self.messages.append(message)

    def send(self, text: str | None, **options: Any) -> Iterator[Chunk]:
        """Add the user's `text` (None: continue after a tool result) and stream the answer."""
        if text is not None:
            self.messages.append({"role": "user", "content": text})
        merged = {**self.defaults, **options}
        if self.tools and "tools" not in merged:
            merged["tools"] = self.tools
        try:
            stream = self._open_stream(merged)
        except Glm4EdgeError:
            if text is not None:
                self.messages.pop()
            raise
        return self._record(stream)

    def _open_stream(self, options: dict[str, Any]) -> Iterator[Chunk]:
        while True:
            try:
                return self.model.stream(self.messages, **options)
            except ContextOverflowError:
                if not self.trim_history or not self._drop_oldest_turn():
                    raise

    def _drop_oldest_turn(self) -> bool:
        """Drop the oldest user turn and everything up to the next one; keep the system prompt."""
        start = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        users = [i for i, m in enumerate(self.messages) if m["role"] == "user" and i >= start]
        if len(users) < 2:
            return False
        del self.messages[start:users[1]]
        return True

    def _record(self, stream: Iterator[Chunk]) -> Iterator[Chunk]:
        text, reasoning, calls = [], [], None
        try:
            for chunk in stream:
                text.append(chunk.text)
                reasoning.append(chunk.reasoning)
                if chunk.finish_reason:
                    calls, self.last_stats = chunk.tool_calls, chunk.stats
                yield chunk
        finally:
            # Even an answer stopped early stays in the history, as the user saw it.
            reply = Reply("".join(text), "".join(reasoning), calls or [])
            self.messages.append(reply.as_message())


@dataclass
class LoadPlan:
    """A checked model folder and device, with the pipeline properties to open them with."""

    folder: Path
    device: str
    manifest: Manifest | None
    properties: dict[str, Any]

    @property
    def base_device(self) -> str:
        return devices.base_device(self.device)


def check_model_folder(path: str | Path) -> Path:
    """The folder, if it holds a converted model; else a ModelFormatError saying what to do."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelFormatError(f"{folder}: no such model folder; convert one with `glm4-edge convert`")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelFormatError(f"{folder} is not an OpenVINO model folder (missing {', '.join(missing)}); "
                               "convert the checkpoint with `glm4-edge convert`")
    return folder


def plan_load(path: str | Path, device: str = DEFAULT_DEVICE, *, max_prompt_len: int | None = None,
              min_response_len: int | None = None, cache: bool = True,
              properties: dict[str, Any] | None = None) -> LoadPlan:
    folder = check_model_folder(path)
    manifest = read_manifest(folder)
    device = devices.check_device(device)
    props = devices.pipeline_properties(device, manifest, folder, max_prompt_len, min_response_len, cache)
    props.update(properties or {})
    return LoadPlan(folder, device, manifest, props)


def openvino_reason(error: Exception, limit: int = 300) -> str:
    """The line of an OpenVINO error that says what went wrong, not the "Exception from <file>" trail."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("Exception from ")]
    return ((said or lines or [type(error).__name__])[0])[:limit]


def open_pipeline(plan: LoadPlan, factory) -> tuple[Any, float]:
    """`factory()` builds the pipeline; an OpenVINO failure becomes one clear line."""
    started = time.perf_counter()
    try:
        pipeline = factory()
    except RuntimeError as error:
        reason = openvino_reason(error)
        raise Glm4EdgeError(f"OpenVINO could not load {plan.folder} on {plan.device}: {reason}") from None
    return pipeline, time.perf_counter() - started


def model_facts(plan: LoadPlan, pipeline) -> tuple[int, str, list[int]]:
    """(context length, generation prefix, stop ids) from the manifest, or the folder for foreign models."""
    manifest = plan.manifest
    context = manifest.context_length if manifest and manifest.context_length else _config_context(plan.folder)
    if plan.base_device == "NPU":
        context = plan.properties["MAX_PROMPT_LEN"] + plan.properties["MIN_RESPONSE_LEN"]
    prefix = manifest.generation_prefix if manifest else _template_prefix(pipeline)
    stop_ids = list(manifest.stop_token_ids) if manifest and manifest.stop_token_ids else sorted(
        pipeline.get_generation_config().stop_token_ids)
    return context, prefix, stop_ids


def load(path: str | Path, device: str = DEFAULT_DEVICE, *, max_prompt_len: int | None = None,
         min_response_len: int | None = None, cache: bool = True, warm_up: bool = False,
         draft: str | Path | None = None, prompt_lookup: bool = False,
         properties: dict[str, Any] | None = None) -> Model:
    """Load a converted model folder on `device` ("CPU", "GPU", "GPU.1", "NPU", "AUTO").

    `draft` (a smaller converted model with the same tokenizer, e.g. GLM-4-9B-0414 for GLM-4-32B-0414;
    glm-edge's 59264-token vocabulary is not GLM-4's 151552) enables speculative decoding; a draft
    with another tokenizer raises ModelFormatError naming both vocabulary sizes. `prompt_lookup`
    drafts from n-grams of the prompt (good for summaries and code edits).
    """
    import openvino_genai

    if draft is not None and prompt_lookup:
        raise BadParameterError("choose --draft or --prompt-lookup, not both", "prompt_lookup")
    plan = plan_load(path, device, max_prompt_len=max_prompt_len, min_response_len=min_response_len, cache=cache,
                     properties=properties)
    props = plan.properties
    if plan.base_device in ("CPU", "GPU"):
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = True  # multi-turn chats reuse the history's KV cache
        props.setdefault("scheduler_config", scheduler)
    if draft is not None:
        draft_folder = Path(draft).expanduser()
        if not (draft_folder / "openvino_model.xml").is_file():
            raise ModelFormatError(f"--draft {draft_folder} is not a converted model folder")
        prompting.check_draft_tokenizer(plan.folder, draft_folder)
        target = plan.base_device if plan.base_device != "AUTO" else "CPU"
        props["draft_model"] = openvino_genai.draft_model(str(draft_folder), target)
    if prompt_lookup:
        props["prompt_lookup"] = True
    pipeline, load_s = open_pipeline(plan, lambda: openvino_genai.LLMPipeline(str(plan.folder), plan.device,
                                                                               **props))
    model = Model(plan.folder, plan.device, pipeline, plan.manifest, load_s, *model_facts(plan, pipeline))
    model.assisted = "draft" if draft is not None else ("prompt_lookup" if prompt_lookup else None)
    if warm_up:
        model.warm_up()
    return model


def _config_context(folder: Path) -> int:
    try:
        config = json.loads((folder / "config.json").read_text())
        return int(config.get("max_position_embeddings") or config.get("seq_length") or DEFAULT_CONTEXT)
    except (OSError, ValueError):
        return DEFAULT_CONTEXT


def _template_prefix(pipeline) -> str:
    """A model converted by other tools: find what its chat template writes for the assistant turn."""
    tokenizer = pipeline.get_tokenizer()
    try:
        messages = [{"role": "user", "content": "ping"}]
        without = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
        with_prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except RuntimeError:
        return glm_format.DEFAULT_GENERATION_PREFIX
    suffix = with_prompt[len(without):] if with_prompt.startswith(without) else ""
    return suffix if suffix.startswith("<|assistant|>") else glm_format.DEFAULT_GENERATION_PREFIX
