"""/v1/chat/completions and /v1/completions: a checked request (`openai_request`) through the scheduler.

Every generation runs `Model.stream` (or, for raw completions and constrained decoding, the prompt-level
path below) in a worker thread and reaches the event loop through the scheduler's queue (see
`server_scheduling`). Answers take OpenAI's wire formats (`server_openai_format`).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import glm_format, server_tools, tool_choice
from .errors import BadParameterError, Glm4EdgeError
from .json_grammar import ToolCallGrammar
from .model import Chunk, Model
from .openai_request import ChatRequest, CompletionRequest, GenerationRequest, parse_chat, parse_completion
from .options import DEFAULT_MAX_NEW_TOKENS
from .server_common import LOG, ApiError, _first_line, from_glm4_edge_error
from .server_openai_format import Collected, _ChatFormat, _CompletionFormat, _Format, _LegacyChatFormat, _sse
from .server_scheduling import ClientGone, DisconnectWatch, EventStream, Generation

if TYPE_CHECKING:
    from .server import OpenAIServer

# --- generation (runs in worker threads) --------------------------------------------------------------


def _default_max_tokens(model: Model, prompt_tokens: int) -> int:
    shape = model.static_shape
    if shape is not None and prompt_tokens <= shape.max_prompt_len:  # what the NPU's KV cache leaves: no fallback
        return max(1, shape.kv_capacity - prompt_tokens)
    if not model.context_length:
        return DEFAULT_MAX_NEW_TOKENS
    return max(1, model.context_length - prompt_tokens)


def stream_prompt(model: Model, prompt: str, request: GenerationRequest, cancel: threading.Event, *, parse: bool,
                  tool_names: Sequence[str] = (), json_schema: str | ToolCallGrammar | None = None) -> Iterator[Chunk]:
    """`Model.stream_prompt` with OpenAI's default for max_tokens: what the context leaves."""
    max_new_tokens = request.max_tokens or _default_max_tokens(model, model.count_tokens(prompt))
    return model.stream_prompt(prompt, parse=parse, tool_names=tool_names, json_schema=json_schema, cancel=cancel,
                               **request.generation_options(max_new_tokens))


def open_chat(model: Model, request: ChatRequest, cancel: threading.Event) -> Iterator[Chunk]:
    """Validate and tokenize now (errors surface before any response); generation starts on iteration."""
    stream = _open_chat(model, request, cancel)
    return stream if request.parallel_tool_calls else server_tools.first_call_only(stream)


def _open_chat(model: Model, request: ChatRequest, cancel: threading.Event) -> Iterator[Chunk]:
    image_tokens = model.image_tokens_in(request.messages)  # raises for an image a text model cannot see
    if image_tokens and (request.any_tool is not None or request.forced_tool is not None
                         or request.json_schema is not None):
        raise BadParameterError("an image cannot go with response_format or a tool_choice that forces a call yet; "
                                "send it with tool_choice auto and no response_format", "messages")
    if request.any_tool is not None:
        # A tool-call turn whose first tokens are constrained to one declared name, then its arguments.
        prompt = model.render(request.messages, request.tools).replace_reply_opener(
            model.generation_prefix, (glm_format.ROLE_TAGS["assistant"], False))
        raw = stream_prompt(model, prompt, request, cancel, parse=False, json_schema=request.any_tool)
        return server_tools.tool_call_stream(raw, [name for name, _ in request.any_tool.tools])
    if request.forced_tool is not None:
        # The same prompt and stream as `Model.stream(tool_choice=...)`; only the schema may differ
        # (see openai_request.parse_chat).
        name = request.forced_tool["name"]
        prompt = tool_choice.forced_prompt(model.render(request.messages, request.tools), model.generation_prefix, name)
        raw = stream_prompt(model, prompt, request, cancel, parse=False,
                            json_schema=tool_choice.arguments_schema(request.forced_tool))
        return server_tools.tool_call_stream(raw, [name], prefix=f"{name}\n")
    if request.json_schema is not None:
        prompt = model.render(request.messages, request.tools)
        return stream_prompt(model, prompt, request, cancel, parse=True, json_schema=request.json_schema,
                             tool_names=[t["name"] for t in request.tools])
    max_tokens = request.max_tokens
    if max_tokens is None:
        prompt_tokens = model.count_tokens(model.render(request.messages, request.tools)) + image_tokens
        max_tokens = _default_max_tokens(model, prompt_tokens)
    return model.stream(request.messages, tools=request.tools or None, cancel=cancel,
                        **request.generation_options(max_tokens))


def open_completion(model: Model, request: CompletionRequest, cancel: threading.Event) -> Iterator[Chunk]:
    return stream_prompt(model, request.prompt, request, cancel, parse=False,
                         json_schema=request.json_schema)


# --- the endpoints -----------------------------------------------------------------------------------


class OpenAIEndpoints:
    """The two routes, on an `OpenAIServer`'s model, scheduler, auth and limits."""

    def __init__(self, server: OpenAIServer):
        self.server = server

    def routes(self) -> list[Route]:
        return [Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"])]

    async def chat_completions(self, request):
        server = self.server
        server._authorize(request)
        chat = parse_chat(await server._read_json(request))
        server._check_model_name(chat.model)
        fmt = (_LegacyChatFormat if chat.legacy_functions else _ChatFormat)(server.config.model_name)
        return await self._generate(request, chat, open_chat, fmt)

    async def completions(self, request):
        server = self.server
        server._authorize(request)
        completion = parse_completion(await server._read_json(request))
        server._check_model_name(completion.model)
        return await self._generate(request, completion, open_completion, _CompletionFormat(server.config.model_name))

    async def _generate(self, request, parsed: GenerationRequest, opener: Callable, fmt: _Format):
        model = self.server._ready_model()
        scheduler = self.server.scheduler
        assert scheduler is not None
        cancel = threading.Event()
        try:  # rendering and tokenizing can take a while on long prompts: not on the event loop
            stream = await run_in_threadpool(opener, model, parsed, cancel)
        except Glm4EdgeError as error:
            raise from_glm4_edge_error(error) from None
        watch = DisconnectWatch(request.receive, cancel)
        try:
            generation = await scheduler.start(stream, cancel, watch)
            # Wait for the first chunk before answering, so a failure at the start of generation
            # (e.g. a JSON schema xgrammar rejects) is a proper error status, not a broken stream.
            try:
                first = await watch.race(generation.next())
            except RuntimeError as error:
                if parsed.json_schema is not None:  # xgrammar compiles the schema at the first step
                    raise ApiError(400, f"response_format: {_first_line(error)}",
                                   param="response_format") from None
                raise ApiError(500, _first_line(error), kind="server_error") from None
            if not parsed.stream:
                reply = Collected()
                chunk = first
                while chunk is not None:
                    reply.add(chunk)
                    chunk = await watch.race(generation.next())
                return JSONResponse(fmt.whole(reply))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; uvicorn drops it
        finally:
            watch.stop()
        return EventStream(generation, self._sse(generation, first, fmt, parsed.include_usage))

    async def _sse(self, generation: Generation, first: Chunk | None, fmt: _Format,
                   include_usage: bool) -> AsyncIterator[str]:
        # Starlette cancels this generator when the client disconnects; `finally` then stops the model.
        try:
            yield _sse(fmt.opening(include_usage))
            async for chunk in generation.chunks(first):
                for payload in fmt.pieces(chunk, include_usage):
                    yield _sse(payload)
                if chunk.finish_reason and include_usage:
                    yield _sse(fmt.usage(chunk.stats))
            yield _sse("[DONE]")
        except Exception as error:  # headers are out: report in-band, as OpenAI does
            LOG.exception("generation failed mid-stream")
            yield _sse(ApiError(500, _first_line(error), kind="server_error").body())
            yield _sse("[DONE]")
        finally:
            generation.cancel.set()
