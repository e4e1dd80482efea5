"""Anthropic Messages API wire formats: the message object, its streaming events and its errors.

Shapes follow Anthropic's API reference (docs.anthropic.com, "Messages", "Streaming Messages" and
"Errors") as the official `anthropic` SDK types them (`anthropic.types.Message`,
`RawMessageStreamEvent`, `ErrorResponse`); tests/test_server_anthropic.py reads every answer back
through that SDK. One `MessageWriter` turns the server's `Chunk`s into both the streamed events and
the whole message, so the two always agree.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from .model import Chunk, GenerationStats

# Anthropic's error type for each HTTP status it documents ("Errors": HTTP errors).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}
# The server answers 503 while the model loads; Anthropic clients know that state as 529 overloaded
# (the SDK retries it, honouring Retry-After).
OVERLOADED_STATUS = 529

# The server's finish reasons (glm4_edge.options.finish_reason) as Anthropic stop reasons.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "cancelled": "end_turn"}
SIGNATURE_PREFIX = "glm4-edge-sha256:"


def error_body(status: int, message: str) -> dict[str, Any]:
    """{"type": "error", "error": {"type", "message"}}, the type from the HTTP status."""
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def anthropic_status(status: int) -> int:
    return OVERLOADED_STATUS if status == 503 else status


def event(name: str, payload: dict[str, Any]) -> str:
    """One server-sent event: Anthropic names each event and repeats the name as the payload's type."""
    data = json.dumps({"type": name, **payload}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n"


def signature(thinking: str) -> str:
    """A thinking block's `signature`: a digest of its text (Anthropic's are opaque and server-checked;
    this server ignores thinking sent back, so the digest only lets a client tell blocks apart)."""
    return SIGNATURE_PREFIX + hashlib.sha256(thinking.encode()).hexdigest()[:32]


def tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def usage(stats: GenerationStats | None, input_tokens: int = 0) -> dict[str, int]:
    """input_tokens: the prompt's tokens; output_tokens: every generated token, thinking included."""
    if stats is None:
        return {"input_tokens": input_tokens, "output_tokens": 0}
    return {"input_tokens": stats.prompt_tokens or input_tokens, "output_tokens": stats.generated_tokens}


class MessageWriter:
    """`Chunk`s -> Anthropic content blocks (text, thinking, tool_use) and the events that stream them.

    `show_thinking`: reasoning becomes thinking blocks (request `thinking` enabled or adaptive);
    otherwise it is left out, though its tokens still count in output_tokens. `omit_thinking`:
    thinking blocks carry only their signature (`display: "omitted"`).
    """

    def __init__(self, model_name: str, *, show_thinking: bool, omit_thinking: bool = False):
        self.model_name = model_name
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.show_thinking, self.omit_thinking = show_thinking, omit_thinking
        self.content: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage = {"input_tokens": 0, "output_tokens": 0}
        self._open: str | None = None  # the type of the block being written, if one is open
        self._thinking = ""  # the open thinking block's whole text, for its signature

    def _envelope(self, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model_name,
                "content": content, "stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence,
                "usage": dict(self.usage)}

    def start(self, input_tokens: int) -> list[str]:
        """message_start (with the prompt's token count) and a first ping, as Anthropic opens a stream."""
        self.usage["input_tokens"] = input_tokens
        return [event("message_start", {"message": self._envelope([])}), event("ping", {})]

    def feed(self, chunk: Chunk) -> list[str]:
        """The events for one chunk; the last chunk (finish_reason set) ends the message."""
        out = []
        if chunk.progress is not None:  # a long prompt is being prefilled: keep the connection alive
            out.append(event("ping", {}))
        if chunk.reasoning and self.show_thinking:
            out += self._write("thinking", chunk.reasoning)
        if chunk.text:
            out += self._write("text", chunk.text)
        if chunk.finish_reason:
            out += self._close()
            for call in chunk.tool_calls or []:
                out += self._tool_use(call)
            self.stop_reason = "stop_sequence" if chunk.stop_sequence else STOP_REASONS.get(
                chunk.finish_reason, "end_turn")
            self.stop_sequence = chunk.stop_sequence
            self.usage = usage(chunk.stats, self.usage["input_tokens"])
            out.append(event("message_delta", {"delta": {"stop_reason": self.stop_reason,
                                                          "stop_sequence": self.stop_sequence},
                                               "usage": dict(self.usage)}))
            out.append(event("message_stop", {}))
        return out

    def message(self) -> dict[str, Any]:
        """The whole message, as a non-streaming request answers it."""
        return self._envelope(self.content)

    def _start_block(self, block: dict[str, Any]) -> str:
        self.content.append(block)
        return event("content_block_start", {"index": len(self.content) - 1, "content_block": dict(block)})

    def _write(self, kind: str, text: str) -> list[str]:
        out = []
        if self._open != kind:
            out += self._close()
            block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {
                "type": "text", "text": ""}
            out.append(self._start_block(block))
            self._open, self._thinking = kind, ""
        index = len(self.content) - 1
        if kind == "thinking":
            self._thinking += text
            if self.omit_thinking:
                return out
            self.content[index]["thinking"] += text
            out.append(event("content_block_delta", {"index": index, "delta": {"type": "thinking_delta",
                                                                               "thinking": text}}))
        else:
            self.content[index]["text"] += text
            out.append(event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": text}}))
        return out

    def _close(self) -> list[str]:
        if self._open is None:
            return []
        index = len(self.content) - 1
        out = []
        if self._open == "thinking":
            self.content[index]["signature"] = signature(self._thinking)
            out.append(event("content_block_delta", {"index": index, "delta": {
                "type": "signature_delta", "signature": self.content[index]["signature"]}}))
        self._open = None
        return [*out, event("content_block_stop", {"index": index})]

    def _tool_use(self, call: dict[str, str]) -> list[str]:
        arguments = call["arguments"]
        block = {"type": "tool_use", "id": tool_use_id(), "name": call["name"], "input": {}}
        out = [self._start_block(block)]
        index = len(self.content) - 1
        try:
            self.content[index]["input"] = json.loads(arguments)  # glm_format.parse_tool_calls: a JSON object
        except ValueError:  # a call cut by max_tokens (server_tools.tool_call_stream): the partial text only
            self.content[index]["input"] = {}
        out.append(event("content_block_delta", {"index": index, "delta": {"type": "input_json_delta",
                                                                           "partial_json": arguments}}))
        return [*out, event("content_block_stop", {"index": index})]
