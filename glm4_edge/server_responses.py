"""The OpenAI Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`) on the chat engine.

A request becomes a chat request (`responses_request`), runs through the server's scheduler exactly as
/v1/chat/completions does (the same slots, the same cancellation when the client leaves), and its
chunks become Responses output items: a `reasoning` item (GLM-Z1's thinking, as `reasoning_text`
content), a `message` item with `output_text`, and one `function_call` item per tool call. Streaming
sends OpenAI's typed events (`event: <type>` plus `data:` with a `sequence_number`), in the order the
`openai` SDK's `ResponseStreamEvent` types describe.

Responses are kept for `previous_response_id` and `GET /v1/responses/{id}` in memory only: at most
`DEFAULT_STORE_MAX_RESPONSES`, each for `DEFAULT_STORE_TTL_S` after it finished, and at most
`DEFAULT_STORE_MAX_CHARS` characters of conversation in all (the oldest go first); `store: false`
keeps nothing. A restart forgets them all.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from . import responses_request
from .errors import Glm4EdgeError
from .model import Chunk, GenerationStats
from .openai_request import ChatRequest, parse_chat
from .responses_request import ResponsesError, ResponsesRequest
from .server_common import LOG, ApiError, _first_line, from_glm4_edge_error
from .server_openai import open_chat
from .server_openai_format import _served_by
from .server_scheduling import ClientGone, DisconnectWatch, EventStream, Generation

DEFAULT_STORE_MAX_RESPONSES = 256
DEFAULT_STORE_TTL_S = 3600.0
DEFAULT_STORE_MAX_CHARS = 32 * 2**20  # conversation text across all stored responses (~64 MiB as str)


# --- the store -------------------------------------------------------------------------------------------


@dataclass
class _Stored:
    response: dict[str, Any]
    conversation: list[dict[str, Any]]  # chat messages up to and including this response's output
    finished_at: float
    chars: int


class ResponseStore:
    """Finished responses by id, bounded by count, age and size (the oldest are dropped first). Thread-safe."""

    def __init__(self, max_responses: int = DEFAULT_STORE_MAX_RESPONSES, ttl_s: float = DEFAULT_STORE_TTL_S,
                 max_chars: int = DEFAULT_STORE_MAX_CHARS):
        self.max_responses, self.ttl_s, self.max_chars = max_responses, ttl_s, max_chars
        self._entries: OrderedDict[str, _Stored] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        chars = len(json.dumps(conversation, ensure_ascii=False))
        with self._lock:
            self._entries[response["id"]] = _Stored(response, conversation, time.monotonic(), chars)
            self._chars += chars
            self._expire()

    def get(self, response_id: str) -> _Stored | None:
        with self._lock:
            self._expire()
            return self._entries.get(response_id)

    def delete(self, response_id: str) -> bool:
        with self._lock:
            entry = self._entries.pop(response_id, None)
            if entry is not None:
                self._chars -= entry.chars
            return entry is not None

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if (len(self._entries) <= self.max_responses and self._chars <= self.max_chars
                    and now - oldest.finished_at <= self.ttl_s):
                return
            self._chars -= self._entries.popitem(last=False)[1].chars

    def describe(self) -> str:
        return (f"responses are kept in memory for {self.ttl_s / 60:g} minutes, at most {self.max_responses} of "
                "them, and not at all with store: false")


# --- output items and events ---------------------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseWriter:
    """Builds one response's output items from its chunks, and the stream events that announce them.

    Each `feed` returns the SSE events (text) for the chunk; a non-streaming request feeds the same
    chunks and drops the events, so both paths answer identical output items.
    """

    def __init__(self, parsed: ResponsesRequest, chat: ChatRequest, model_name: str, count_tokens):
        self.parsed, self.chat, self.model_name = parsed, chat, model_name
        self.count_tokens = count_tokens  # text -> tokens, for usage.output_tokens_details.reasoning_tokens
        self.id = _id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the reasoning or message item text is streaming into
        self.text = ""
        self.reasoning = ""
        self.calls: list[dict[str, str]] = []
        self.status = "in_progress"
        self.finish_reason: str | None = None
        self.stats: GenerationStats | None = None

    # --- the response object ---

    def response(self, status: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        body, raw = self.parsed.body, self.parsed.raw
        status = status or self.status
        usage = None
        if self.stats is not None:
            reasoning = self.count_tokens(self.reasoning) if self.reasoning else 0
            prompt, generated = self.stats.prompt_tokens, self.stats.generated_tokens
            usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                     "output_tokens": generated,
                     "output_tokens_details": {"reasoning_tokens": min(reasoning, generated)},
                     "total_tokens": prompt + generated}
        fmt = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text and body.text.format else {
            "type": "text"}
        tools = [{"strict": True, "description": None, "parameters": None, **tool}
                 for tool in (raw.get("tools") or [])]
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "background": False, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": body.max_tool_calls, "model": self.model_name,
            "output": [dict(item) for item in self.output], "parallel_tool_calls": self.chat.parallel_tool_calls,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default", "store": self.parsed.store,
            "temperature": self.chat.options.temperature, "text": {"format": fmt, "verbosity": "medium"},
            "tool_choice": raw.get("tool_choice") or "auto", "tools": tools, "top_p": self.chat.options.top_p,
            "truncation": "disabled", "usage": usage, "user": body.user, "metadata": body.metadata or {},
            "safety_identifier": body.safety_identifier, "prompt_cache_key": body.prompt_cache_key,
            **_served_by(self.stats),
        }

    def conversation(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`history` and this request's input followed by its answer, as chat messages for the next turn."""
        out = [*history, *self.parsed.messages]
        if self.text:
            out.append({"role": "assistant", "content": self.text})
        for item in self.output:
            if item["type"] == "function_call":
                out.append({"role": "assistant", "content": "", "tool_calls": [
                    {"id": item["call_id"], "type": "function",
                     "function": {"name": item["name"], "arguments": item["arguments"]}}]})
        return out

    # --- events ---

    def _event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def start(self) -> list[str]:
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.output) - 1}

    def _open(self, kind: str) -> list[str]:
        events = self._close()
        if kind == "reasoning":
            item = {"id": _id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        else:
            item = {"id": _id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                    "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self.output.append(item)
        self.open = item
        events.append(self._event("response.output_item.added", output_index=len(self.output) - 1,
                                  item=dict(item, content=[])))
        events.append(self._event("response.content_part.added", **self._where(), content_index=0, part=part))
        item["content"] = [dict(part)]
        return events

    def _delta(self, kind: str, text: str) -> list[str]:
        events = [] if self.open is not None and self.open["type"] == kind else self._open(kind)
        self.open["content"][0]["text"] += text
        name = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra = {} if kind == "reasoning" else {"logprobs": []}
        events.append(self._event(name, **self._where(), content_index=0, delta=text, **extra))
        return events

    def _close(self, status: str = "completed") -> list[str]:
        item = self.open
        if item is None:
            return []
        part = item["content"][0]
        name = "response.reasoning_text.done" if item["type"] == "reasoning" else "response.output_text.done"
        extra = {} if item["type"] == "reasoning" else {"logprobs": []}
        where = self._where()
        events = [self._event(name, **where, content_index=0, text=part["text"], **extra),
                  self._event("response.content_part.done", **where, content_index=0, part=dict(part))]
        item["status"] = status if item["type"] == "message" else "completed"
        if item["type"] == "reasoning" and "reasoning.encrypted_content" in (self.parsed.body.include or ()):
            # Opaque to the client, as OpenAI's is, but not encrypted: the thinking as base64. Sent back, it is
            # accepted and left out of the prompt, as GLM-Z1's template leaves out every past turn's thinking.
            item["encrypted_content"] = base64.b64encode(part["text"].encode()).decode()
        events.append(self._event("response.output_item.done", output_index=where["output_index"], item=dict(item)))
        self.open = None
        return events

    def feed(self, chunk: Chunk) -> list[str]:
        events: list[str] = []
        if chunk.reasoning:
            self.reasoning += chunk.reasoning
            events += self._delta("reasoning", chunk.reasoning)
        if chunk.text:
            self.text += chunk.text
            events += self._delta("message", chunk.text)
        if chunk.finish_reason:
            events += self._finish(chunk)
        return events

    def _finish(self, chunk: Chunk) -> list[str]:
        self.finish_reason, self.stats = chunk.finish_reason, chunk.stats
        self.status = "incomplete" if chunk.finish_reason == "length" else "completed"
        calls = chunk.tool_calls or []
        if not calls and not self.text:  # an empty answer is still a message, as OpenAI's are
            events = self._open("message")
        else:
            events = []
        events += self._close("incomplete" if self.status == "incomplete" else "completed")
        for call in calls:
            item = {"id": _id("fc"), "type": "function_call", "call_id": _id("call"), "name": call["name"],
                    "arguments": "", "status": "in_progress"}
            self.output.append(item)
            index = len(self.output) - 1
            events.append(self._event("response.output_item.added", output_index=index, item=dict(item)))
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                      output_index=index, delta=call["arguments"]))
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, arguments=call["arguments"]))
            item.update(arguments=call["arguments"], status=self.status)  # incomplete: cut by max_output_tokens
            events.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        kind = "response.incomplete" if self.status == "incomplete" else "response.completed"
        events.append(self._event(kind, response=self.response()))
        return events

    def failed(self, message: str) -> str:
        self.status = "failed"
        return self._event("response.failed", response=self.response(
            "failed", {"code": "server_error", "message": message}))


# --- the endpoints -------------------------------------------------------------------------------------


def _bad_request(error: ResponsesError) -> ApiError:
    return ApiError(400, error.message, param=error.param, code=error.code)


def _renamed(error: ApiError) -> ApiError:
    """A chat-path error in the Responses API's names (input, text.format, max_output_tokens)."""
    param, message = responses_request.responses_param(error.param, error.message)
    return ApiError(error.status, message, param=param, code=error.code, kind=error.kind, headers=error.headers)


class ResponsesApi:
    """The /v1/responses endpoints of one `OpenAIServer` (its auth, body limit, model and scheduler)."""

    def __init__(self, server, store: ResponseStore | None = None):
        self.server = server
        self.store = store or ResponseStore()

    def routes(self) -> list:
        from starlette.routing import Route

        return [Route("/v1/responses", self.create, methods=["POST"]),
                Route("/v1/responses/{response_id}", self.retrieve, methods=["GET"]),
                Route("/v1/responses/{response_id}", self.delete, methods=["DELETE"])]

    def _stored(self, response_id: str, param: str | None = None) -> Any:
        entry = self.store.get(response_id)
        if entry is None:
            status = 400 if param else 404
            raise ApiError(status, f"no response with id {response_id!r} is stored here ({self.store.describe()})",
                           param=param, code="not_found" if param is None else "previous_response_not_found")
        return entry

    async def retrieve(self, request):
        from starlette.responses import JSONResponse

        self.server._authorize(request)
        return JSONResponse(self._stored(request.path_params["response_id"]).response)

    async def delete(self, request):
        from starlette.responses import JSONResponse

        self.server._authorize(request)
        response_id = request.path_params["response_id"]
        self._stored(response_id)
        self.store.delete(response_id)
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})

    def _parse(self, raw: dict[str, Any]) -> tuple[ResponsesRequest, ChatRequest, list[dict[str, Any]]]:
        try:
            parsed = responses_request.parse(raw)
        except ResponsesError as error:
            raise _bad_request(error) from None
        history: list[dict[str, Any]] = []
        if parsed.body.previous_response_id is not None:
            history = list(self._stored(parsed.body.previous_response_id, "previous_response_id").conversation)
        # Instructions belong to this request only: a previous response's are not carried over (OpenAI's rule).
        system = [{"role": "system", "content": parsed.body.instructions}] if parsed.body.instructions else []
        try:
            chat = parse_chat({**parsed.chat, "messages": [*system, *history, *parsed.messages]})
        except ApiError as error:
            raise _renamed(error) from None
        return parsed, chat, history

    async def create(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse, Response

        server = self.server
        server._authorize(request)
        parsed, chat, history = self._parse(await server._read_json(request))
        server._check_model_name(chat.model)
        model = server._ready_model()
        cancel = threading.Event()
        try:  # rendering and tokenizing can take a while on long prompts: not on the event loop
            stream = await run_in_threadpool(open_chat, model, chat, cancel)
        except Glm4EdgeError as error:
            raise _renamed(from_glm4_edge_error(error)) from None
        writer = ResponseWriter(parsed, chat, server.config.model_name, model.count_tokens)
        watch = DisconnectWatch(request.receive, cancel)
        try:
            generation = await server.scheduler.start(stream, cancel, watch)
            try:  # the first chunk before answering: a schema xgrammar rejects is a 400, not a broken stream
                first = await watch.race(generation.next())
            except RuntimeError as error:
                if chat.json_schema is not None:
                    raise ApiError(400, f"text.format: {_first_line(error)}", param="text.format") from None
                raise ApiError(500, _first_line(error), kind="server_error") from None
            if not chat.stream:
                chunk = first
                while chunk is not None:
                    writer.feed(chunk)
                    chunk = await watch.race(generation.next())
                self._keep(writer, history)
                return JSONResponse(writer.response())
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; uvicorn drops it
        finally:
            watch.stop()
        return EventStream(generation, self._events(generation, first, writer, history))

    def _keep(self, writer: ResponseWriter, history: list[dict[str, Any]]) -> None:
        if writer.parsed.store and writer.finish_reason not in (None, "cancelled"):
            self.store.put(writer.response(), writer.conversation(history))

    async def _events(self, generation: Generation, first: Chunk | None, writer: ResponseWriter,
                      history: list[dict[str, Any]]) -> AsyncIterator[str]:
        # Starlette cancels this generator when the client disconnects; `finally` then stops the model.
        try:
            for event in writer.start():
                yield event
            async for chunk in generation.chunks(first):
                for event in writer.feed(chunk):
                    yield event
            self._keep(writer, history)
        except Exception as error:  # headers are out: report in-band, as OpenAI does
            LOG.exception("generation failed mid-stream")
            yield writer.failed(_first_line(error))
        finally:
            generation.cancel.set()
