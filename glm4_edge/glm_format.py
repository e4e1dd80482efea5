"""What is GLM-4 specific: the prompt, stop tokens, reasoning split and tool calls.

Pure functions and small state machines over text, so they are tested without a model.
The prompt is rendered here rather than by each checkpoint's Jinja template because the
templates differ between families (0414, -hf, legacy) and their tool blocks are phrased
differently; one renderer gives every face the same, testable prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import BadParameterError

PROMPT_PREFIX = "[gMASK]<sop>"
ROLE_TAGS = {
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "tool": "<|observation|>",
    "observation": "<|observation|>",
}
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)
# <|endoftext|>, <|user|>, <|observation|>: the model ends its turn with one of these.
STOP_TOKEN_IDS = (151329, 151336, 151338)
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
DEFAULT_GENERATION_PREFIX = "<|assistant|>"
TOOLS_HEADER = "# 可用工具"
TOOLS_FOOTER = "在调用上述函数时，请使用 Json 格式表示调用的参数。"

Message = dict[str, Any]


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI clients expect

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "arguments": self.arguments}


def normalize_messages(messages: str | Sequence[Message]) -> list[Message]:
    """Accept a plain string (one user turn) or OpenAI-style message dicts; check their shape."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or not messages:
        raise BadParameterError("messages must be a non-empty list of {role, content} dicts or a string",
                                "messages")
    normalized = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise BadParameterError(f"messages[{index}] must be a dict with a 'role'", "messages")
        role = message["role"]
        if role not in ROLE_TAGS:
            raise BadParameterError(
                f"messages[{index}].role {role!r} is not one of system, user, assistant, tool", "messages"
            )
        content = message.get("content") or ""
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise BadParameterError(f"messages[{index}].content must be text", "messages")
        normalized.append({**message, "content": content})
    return normalized


def tool_schemas(tools: Iterable[dict] | None) -> list[dict]:
    """OpenAI `{"type": "function", "function": {...}}` entries or bare function schemas."""
    schemas = []
    for index, tool in enumerate(tools or []):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadParameterError(f"tools[{index}] must be a function schema with a name", "tools")
        schemas.append(function)
    return schemas


def render_tools_block(tools: Sequence[dict]) -> str:
    parts = [TOOLS_HEADER]
    for function in tools:
        parts.append(f"## {function['name']}\n\n{json.dumps(function, ensure_ascii=False, indent=4)}\n"
                     f"{TOOLS_FOOTER}")
    return "\n\n".join(parts)


def strip_reasoning(content: str) -> str:
    """Earlier Z1 turns are fed back without their thinking, as the Z1 template does."""
    if THINK_CLOSE in content:
        return content.split(THINK_CLOSE)[-1].lstrip()
    return content


def render_prompt(
    messages: str | Sequence[Message],
    tools: Sequence[dict] | None = None,
    generation_prefix: str = DEFAULT_GENERATION_PREFIX,
) -> str:
    """The GLM-4 chat prompt: `[gMASK]<sop>` once, then `<|role|>\\ncontent` per turn."""
    messages = normalize_messages(messages)
    schemas = tool_schemas(tools)
    parts = [PROMPT_PREFIX]
    if schemas:
        system_text = ""
        if messages[0]["role"] == "system":
            system_text = messages[0]["content"].rstrip() + "\n\n"
            messages = messages[1:]
        parts.append(f"<|system|>\n{system_text}{render_tools_block(schemas)}")
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "assistant":
            calls = message.get("tool_calls") or []
            if calls:
                for call in calls:
                    function = call.get("function", call)
                    arguments = function.get("arguments", "{}")
                    if not isinstance(arguments, str):
                        arguments = json.dumps(arguments, ensure_ascii=False)
                    parts.append(f"<|assistant|>{function['name']}\n{arguments}")
                continue
            parts.append(f"<|assistant|>\n{strip_reasoning(content)}")
        else:
            parts.append(f"{ROLE_TAGS[role]}\n{content}")
    parts.append(generation_prefix)
    return "".join(parts)


def prefix_hold_length(text: str, needles: Iterable[str]) -> int:
    """How many trailing characters of `text` could still begin one of `needles`."""
    hold = 0
    for needle in needles:
        for length in range(min(len(needle) - 1, len(text)), hold, -1):
            if text.endswith(needle[:length]):
                hold = length
                break
    return hold


class StopMatcher:
    """Cuts generated text at the first stop string, never showing a partial stop string."""

    def __init__(self, stop: Sequence[str] | None):
        self.stops = [s for s in (stop or []) if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""  # text already in flight after the stop string is dropped
        if not self.stops:
            return text
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            position = min(hits)[0]
            out, self.pending, self.stopped = self.pending[:position], "", True
            return out
        hold = prefix_hold_length(self.pending, self.stops)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class ParsedPiece:
    text: str = ""
    reasoning: str = ""


@dataclass
class ReplyParser:
    """Splits streamed model output into answer text, Z1 reasoning and GLM-4 tool calls.

    The model answers `\\n{text}`, or `\\n<think>{reasoning}</think>{text}` (Z1), or a tool call
    `{name}\\n{json}`. Text is held back only while it could still be a tag or a tool name.
    """

    tool_names: Sequence[str] = ()
    in_reasoning: bool = False
    _mode: str = field(default="start", init=False)  # start -> reasoning | text | tool
    _buffer: str = field(default="", init=False)
    _tool_text: str = field(default="", init=False)
    saw_reasoning: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.in_reasoning:
            self._mode, self.saw_reasoning = "reasoning", True

    def feed(self, text: str) -> ParsedPiece:
        self._buffer += text
        piece = ParsedPiece()
        while self._buffer:
            if not self._step(piece):
                break
        return piece

    def _step(self, piece: ParsedPiece) -> bool:
        """Consume what can be decided from the buffer; False when more text is needed."""
        buffer = self._buffer
        if self._mode == "start":
            stripped = buffer.lstrip("\n")
            if not stripped:
                return False
            if THINK_OPEN.startswith(stripped) and len(stripped) < len(THINK_OPEN):
                return False
            if stripped.startswith(THINK_OPEN):
                self._mode, self.saw_reasoning = "reasoning", True
                self._buffer = stripped[len(THINK_OPEN):]
                return True
            if self.tool_names and not buffer.startswith("\n"):
                first_line, newline, _ = buffer.partition("\n")
                if not newline:
                    if any(name.startswith(first_line) for name in self.tool_names):
                        return False
                elif first_line.strip() in self.tool_names:
                    self._mode, self._tool_text, self._buffer = "tool", buffer, ""
                    return True
            self._mode, self._buffer = "text", stripped if buffer.startswith("\n") else buffer
            return True
        if self._mode == "reasoning":
            end = buffer.find(THINK_CLOSE)
            if end >= 0:
                piece.reasoning += buffer[:end]
                self._mode, self._buffer = "after_reasoning", buffer[end + len(THINK_CLOSE):]
                return True
            hold = prefix_hold_length(buffer, [THINK_CLOSE])
            piece.reasoning += buffer[: len(buffer) - hold]
            self._buffer = buffer[len(buffer) - hold:]
            return False
        if self._mode == "after_reasoning":
            stripped = buffer.lstrip("\n")
            if not stripped:
                return False
            self._mode, self._buffer = "start_after_reasoning", stripped
            return True
        if self._mode == "start_after_reasoning":
            # After thinking, a Z1 model may still answer with a tool call.
            if self.tool_names:
                first_line, newline, _ = buffer.partition("\n")
                if not newline and any(name.startswith(first_line) for name in self.tool_names):
                    return False
                if newline and first_line.strip() in self.tool_names:
                    self._mode, self._tool_text, self._buffer = "tool", buffer, ""
                    return True
            self._mode = "text"
            return True
        if self._mode == "tool":
            self._tool_text += buffer
            self._buffer = ""
            return False
        piece.text += buffer
        self._buffer = ""
        return False

    def finish(self) -> tuple[ParsedPiece, list[ToolCall]]:
        """Flush what was held back; a held tool call that is not valid JSON becomes text."""
        piece = ParsedPiece()
        if self._mode == "tool":
            calls = parse_tool_calls(self._tool_text, self.tool_names)
            if calls:
                return piece, calls
            piece.text = self._tool_text
        elif self._mode == "reasoning":
            piece.reasoning = self._buffer
        else:
            piece.text = self._buffer.lstrip("\n") if self._mode.startswith("start") else self._buffer
        self._buffer = ""
        return piece, []


_TOOL_CALL = re.compile(r"^\s*([^\n{]+?)\s*\n(.*)$", re.S)


def parse_tool_calls(text: str, tool_names: Sequence[str] = ()) -> list[ToolCall]:
    """`name\\n{json}` (one or more, as GLM-4 writes them) -> tool calls; [] if it is not one."""
    calls = []
    remaining = text.strip()
    decoder = json.JSONDecoder()
    while remaining:
        match = _TOOL_CALL.match(remaining)
        if not match:
            return []
        name, rest = match.group(1).strip(), match.group(2).lstrip()
        if tool_names and name not in tool_names:
            return []
        try:
            arguments, end = decoder.raw_decode(rest)
        except json.JSONDecodeError:
            return []
        if not isinstance(arguments, dict):
            return []
        calls.append(ToolCall(name, json.dumps(arguments, ensure_ascii=False)))
        remaining = rest[end:].strip()
    return calls


def split_reasoning(text: str, starts_in_reasoning: bool = False) -> tuple[str, str]:
    """Whole-text version of the stream split: returns (reasoning, answer)."""
    parser = ReplyParser(in_reasoning=starts_in_reasoning)
    piece = parser.feed(text)
    tail, _ = parser.finish()
    return piece.reasoning + tail.reasoning, piece.text + tail.text
