"""Anthropic Messages API for `glm4-edge serve`: POST /v1/messages and /v1/messages/count_tokens.

Local coding agents speak this API (Claude-Code-style tools, the `anthropic` SDK), as Ollama,
llama.cpp and LM Studio serve it. A request is checked and mapped onto the server's own chat request
by `anthropic_request` (then `openai_request.parse_chat`: the same sampling ranges, tool schemas,
`tool_choice` grammars and structured output as /v1/chat/completions), and generated through the
same scheduler, so queueing, parallel decoding and cancel-on-disconnect behave exactly as for chat.
Answers and errors take Anthropic's shapes (`anthropic_format`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import anthropic_format
from .anthropic_request import AnthropicRequest, bad_field, parse_messages
from .errors import Glm4EdgeError
from .model import Chunk, Model

if TYPE_CHECKING:
    from .server import OpenAIServer

PATHS = ("/v1/messages", "/v1/messages/count_tokens")


# --- generation --------------------------------------------------------------------------------------


def _open(model: Model, parsed: AnthropicRequest, cancel: threading.Event) -> tuple[Iterator[Chunk], int]:
    """The chat stream (see server_openai.open_chat) and the prompt's token count for message_start."""
    from .server_openai import open_chat

    stream = open_chat(model, parsed.chat, cancel)
    prompt_tokens = model.count_tokens(model.render(parsed.chat.messages, parsed.chat.tools)) if (
        parsed.chat.stream) else 0
    return stream, prompt_tokens


def _count(model: Model, parsed: AnthropicRequest) -> int:
    return model.count_tokens(model.render(parsed.chat.messages, parsed.chat.tools))


class AnthropicEndpoints:
    """The two routes, on an `OpenAIServer`'s model, scheduler, auth and limits."""

    def __init__(self, server: OpenAIServer):
        self.server = server

    def routes(self) -> list:
        from starlette.routing import Route

        return [Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"])]

    async def _parse(self, request, *, counting: bool = False) -> AnthropicRequest:
        self.server._authorize(request)
        body = await self.server._read_json(request)
        parsed = parse_messages(body, counting=counting)
        self.server._check_model_name(parsed.chat.model)
        return parsed

    async def count_tokens(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        parsed = await self._parse(request, counting=True)
        model = self.server._ready_model()
        try:
            return JSONResponse({"input_tokens": await run_in_threadpool(_count, model, parsed)})
        except Glm4EdgeError as error:
            raise _api_error(error) from None

    async def messages(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse, Response

        from .server_common import ApiError, _first_line
        from .server_scheduling import ClientGone, DisconnectWatch, EventStream

        parsed = await self._parse(request)
        model = self.server._ready_model()
        scheduler = self.server.scheduler
        assert scheduler is not None
        cancel = threading.Event()
        try:  # rendering and tokenizing take a while on long prompts: not on the event loop
            stream, prompt_tokens = await run_in_threadpool(_open, model, parsed, cancel)
        except Glm4EdgeError as error:
            raise _api_error(error) from None
        writer = anthropic_format.MessageWriter(self.server.config.model_name, show_thinking=parsed.show_thinking,
                                                omit_thinking=parsed.omit_thinking)
        watch = DisconnectWatch(request.receive, cancel)
        try:
            generation = await scheduler.start(stream, cancel, watch)
            try:  # the first chunk before any answer, so a failing start is an error status (see server)
                first = await watch.race(generation.next())
            except RuntimeError as error:
                if parsed.chat.json_schema is not None:  # xgrammar compiles the schema at the first step
                    raise bad_field("output_config.format", _first_line(error)) from None
                raise ApiError(500, _first_line(error), kind="server_error") from None
            if not parsed.chat.stream:
                chunk = first
                while chunk is not None:
                    writer.feed(chunk)
                    chunk = await watch.race(generation.next())
                return JSONResponse(writer.message())
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        finally:
            watch.stop()
        return EventStream(generation, _events(generation, first, writer, prompt_tokens))


async def _events(generation, first: Chunk | None, writer: anthropic_format.MessageWriter, prompt_tokens: int):
    from .server_common import LOG, _first_line

    try:
        for line in writer.start(prompt_tokens):
            yield line
        async for chunk in generation.chunks(first):
            for line in writer.feed(chunk):
                yield line
    except Exception as error:  # headers are out: report in-band, as Anthropic does
        LOG.exception("generation failed mid-stream")
        yield anthropic_format.event("error", {"error": anthropic_format.error_body(500, _first_line(error))["error"]})
    finally:
        generation.cancel.set()


def _api_error(error: Glm4EdgeError):
    from .server_common import from_glm4_edge_error

    mapped = from_glm4_edge_error(error)
    if mapped.param == "response_format":
        mapped.param, mapped.message = "output_config.format", f"output_config.format: {mapped.message}"
    return mapped


def is_anthropic_path(path: str) -> bool:
    return path in PATHS or path.startswith("/v1/messages/")


def error_response(error):
    """An `server.ApiError` in Anthropic's shape: {"type": "error", "error": {"type", "message"}}."""
    from starlette.responses import JSONResponse

    status = anthropic_format.anthropic_status(error.status)
    return JSONResponse(anthropic_format.error_body(status, error.message), status_code=status,
                        headers=error.headers)
