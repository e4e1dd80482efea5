"""OpenAI's wire formats for answers: chat.completion(.chunk), the legacy function_call shape and
text_completion, whole and streamed (server-sent events), with usage and glm4-edge's served-by extra."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import server_tools
from .model import Chunk, GenerationStats


def _usage(stats: GenerationStats | None) -> dict[str, int]:
    prompt = stats.prompt_tokens if stats else 0
    completion = stats.generated_tokens if stats else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _served_by(stats: GenerationStats | None) -> dict[str, Any]:
    """An extra response field when the request ran on the fallback device; clients may ignore it."""
    if stats is None or not stats.fallback:
        return {}
    return {"glm4_edge": {"device": stats.device, "fallback": stats.fallback}}


def _finish_reason(reason: str | None) -> str:
    return "stop" if reason in (None, "cancelled") else reason


def _openai_tool_calls(calls: list[dict[str, str]], streaming: bool) -> list[dict[str, Any]]:
    out = []
    for index, call in enumerate(calls):
        entry: dict[str, Any] = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                 "function": {"name": call["name"], "arguments": call["arguments"]}}
        out.append({"index": index, **entry} if streaming else entry)
    return out


@dataclass
class Collected:
    text: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    finish_reason: str | None = None
    stats: GenerationStats | None = None

    def add(self, chunk: Chunk) -> None:
        self.text += chunk.text
        self.reasoning += chunk.reasoning
        if chunk.finish_reason:
            self.finish_reason, self.stats = chunk.finish_reason, chunk.stats
            self.tool_calls = chunk.tool_calls or []


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False,
                                                               separators=(",", ":"))
    return f"data: {data}\n\n"


# --- OpenAI wire formats -----------------------------------------------------------------------------


class _Format:
    object_name = ""
    prefix = ""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _envelope(self, choices: list[dict[str, Any]], streaming: bool, **extra: Any) -> dict[str, Any]:
        name = self.object_name + (".chunk" if streaming and self.object_name == "chat.completion" else "")
        return {"id": self.id, "object": name, "created": self.created, "model": self.model_name,
                "choices": choices, **extra}

    def usage(self, stats: GenerationStats | None) -> dict[str, Any]:
        return self._envelope([], True, usage=_usage(stats))

    def opening(self, include_usage: bool) -> dict[str, Any]:
        raise NotImplementedError

    def pieces(self, chunk: Chunk, include_usage: bool) -> list[dict[str, Any]]:
        raise NotImplementedError

    def whole(self, reply: Collected) -> dict[str, Any]:
        raise NotImplementedError


class _ChatFormat(_Format):
    object_name = "chat.completion"
    prefix = "chatcmpl"

    def _chunk(self, delta: dict[str, Any], finish: str | None, include_usage: bool) -> dict[str, Any]:
        extra = {"usage": None} if include_usage else {}
        return self._envelope([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], True,
                              **extra)

    def opening(self, include_usage: bool) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": ""}, None, include_usage)

    def pieces(self, chunk: Chunk, include_usage: bool) -> list[dict[str, Any]]:
        out = []
        if chunk.reasoning:
            out.append(self._chunk({"reasoning_content": chunk.reasoning}, None, include_usage))
        if chunk.text:
            out.append(self._chunk({"content": chunk.text}, None, include_usage))
        if chunk.tool_calls:
            out.append(self._chunk({"tool_calls": _openai_tool_calls(chunk.tool_calls, True)}, None,
                                   include_usage))
        if chunk.finish_reason:
            out.append({**self._chunk({}, _finish_reason(chunk.finish_reason), include_usage),
                        **_served_by(chunk.stats)})
        return out

    def whole(self, reply: Collected) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.reasoning:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = _openai_tool_calls(reply.tool_calls, False)
        elif message["content"] is None:
            message["content"] = ""
        choice = {"index": 0, "message": message, "logprobs": None,
                  "finish_reason": _finish_reason(reply.finish_reason)}
        return self._envelope([choice], False, usage=_usage(reply.stats), **_served_by(reply.stats))


class _LegacyChatFormat(_ChatFormat):
    """Answers to `functions`/`function_call` requests: the call as `function_call`, as OpenAI did."""

    def _chunk(self, delta: dict[str, Any], finish: str | None, include_usage: bool) -> dict[str, Any]:
        return server_tools.legacy_shape(super()._chunk(delta, finish, include_usage))

    def whole(self, reply: Collected) -> dict[str, Any]:
        return server_tools.legacy_shape(super().whole(reply))


class _CompletionFormat(_Format):
    object_name = "text_completion"
    prefix = "cmpl"

    def _chunk(self, text: str, finish: str | None, include_usage: bool) -> dict[str, Any]:
        extra = {"usage": None} if include_usage else {}
        return self._envelope([{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], True,
                              **extra)

    def opening(self, include_usage: bool) -> dict[str, Any]:
        return self._chunk("", None, include_usage)

    def pieces(self, chunk: Chunk, include_usage: bool) -> list[dict[str, Any]]:
        out = []
        if chunk.text:
            out.append(self._chunk(chunk.text, None, include_usage))
        if chunk.finish_reason:
            out.append({**self._chunk("", _finish_reason(chunk.finish_reason), include_usage),
                        **_served_by(chunk.stats)})
        return out

    def whole(self, reply: Collected) -> dict[str, Any]:
        choice = {"index": 0, "text": reply.text, "logprobs": None,
                  "finish_reason": _finish_reason(reply.finish_reason)}
        return self._envelope([choice], False, usage=_usage(reply.stats), **_served_by(reply.stats))
