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


# How each published template phrases its tool block (see `PROMPT_FORMATS`).
_LEGACY_TOOLS_PREAMBLE = ("你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
                          "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n")
_Z1_TOOLS_PREAMBLE = ("你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
                      "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n")

GLM4_0414 = "glm-4-0414"
GLM_Z1_0414 = "glm-z1-0414"
GLM4_9B_CHAT = "glm-4-9b-chat"
# The published chat templates this renderer reproduces byte for byte (as transformers renders them,
# trim_blocks and lstrip_blocks on); tests/data/chat_templates holds their text and sources.
#   glm-4-0414:    THUDM/GLM-4-9B-0414, GLM-4-32B-0414
#   glm-z1-0414:   THUDM/GLM-Z1-9B-0414, GLM-Z1-32B-0414 (thinking dropped from every earlier turn)
#   glm-4-9b-chat: THUDM/glm-4-9b-chat (legacy chatglm) and glm-4-9b-chat-hf, which ships the same template
PROMPT_FORMATS = (GLM4_0414, GLM_Z1_0414, GLM4_9B_CHAT)
DEFAULT_PROMPT_FORMAT = GLM4_0414


def detect_prompt_format(chat_template: str | None, family: str = "glm4", reasoning: bool = False) -> str:
    """Which published template a checkpoint's own `chat_template` is; by family when it is none of them.

    The markers are the constructs that tell the three templates apart: the legacy one reads tools from
    a message (`item['tools']`), the 0414 ones move system turns first, and Z1 trims `</think>`.
    """
    template = chat_template or ""
    if "item['tools']" in template:
        return GLM4_9B_CHAT
    if "message.role != 'system'" in template:
        return GLM_Z1_0414 if "split('</think>')" in template else GLM4_0414
    if family in ("glm", "chatglm"):
        return GLM4_9B_CHAT
    return GLM_Z1_0414 if reasoning else GLM4_0414


class Prompt(str):
    """A rendered prompt that remembers which parts are message text.

    It is the prompt string (so it prints, measures and compares as one), and `segments` says
    which pieces the renderer wrote (role tags, fixed headers) and which came from messages, tool
    schemas or tool results. Only the renderer's pieces may become special tokens: see
    `encoding_chunks`. Slicing or adding to it gives a plain `str`, which is encoded raw.
    """

    segments: tuple[tuple[str, bool], ...]  # (text, is message content)

    def __new__(cls, segments: Iterable[tuple[str, bool]]) -> Prompt:
        merged: list[tuple[str, bool]] = []
        for text, is_content in segments:
            if not text:
                continue
            if merged and merged[-1][1] == is_content:
                merged[-1] = (merged[-1][0] + text, is_content)
            else:
                merged.append((text, is_content))
        prompt = super().__new__(cls, "".join(text for text, _ in merged))
        prompt.segments = tuple(merged)
        return prompt

    def replace_reply_opener(self, old: str, *segments: tuple[str, bool]) -> Prompt:
        """This prompt with its closing `old` (the generation prefix) replaced by `segments`.

        Raises ValueError if the prompt does not end with `old` written by the renderer.
        """
        if not self.endswith(old) or not self.segments or self.segments[-1][1]:
            raise ValueError("the prompt does not end with the renderer's reply opener")
        last, _ = self.segments[-1]
        return Prompt([*self.segments[:-1], (last[: len(last) - len(old)], False), *segments])

    def encoding_chunks(self) -> list[str]:
        """Pieces to tokenize one by one and concatenate, so no message text becomes a special token.

        OpenVINO tokenizers have no switch to treat special-token text as plain text (Hugging Face's
        `split_special_tokens`), so each special token's text inside message content is cut into two
        chunks: the tokenizer then never sees it whole. The cut is placed before the token's closing
        punctuation (`<|user` + `|>`), a boundary GLM-4's pre-tokenizer already splits at, so the ids
        are those a tokenizer with `split_special_tokens=True` gives.
        """
        chunks = [""]
        for text, is_content in self.segments:
            pieces = split_special_text(text) if is_content else [text]
            chunks[-1] += pieces[0]
            chunks.extend(pieces[1:])
        return [chunk for chunk in chunks if chunk]


# Every GLM-4 special token's text, the vision ones too (all are special ids in the 151552 vocabulary).
PROTECTED_TOKENS = SPECIAL_TOKENS + ("<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                                     "<|end_of_video|>")
_PROTECTED = re.compile("|".join(re.escape(t) for t in sorted(PROTECTED_TOKENS, key=len, reverse=True)))


def split_special_text(text: str) -> list[str]:
    """`text` cut inside every special-token string it contains (see `Prompt.encoding_chunks`)."""
    pieces, start = [], 0
    for match in _PROTECTED.finditer(text):
        token = match.group()
        cut = match.start() + len(re.sub(r"[^0-9A-Za-z]+$", "", token))
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _tools_block(schemas: Sequence[dict], prompt_format: str) -> list[tuple[str, bool]]:
    """The tool turn as each template writes it, including its whitespace quirks under trim_blocks."""
    if prompt_format == GLM4_0414:
        parts: list[tuple[str, bool]] = [(f"<|system|>\n{TOOLS_HEADER}\n", False)]
    elif prompt_format == GLM_Z1_0414:
        parts = [(f"<|system|>\n{_Z1_TOOLS_PREAMBLE}{TOOLS_HEADER}", False)]
    else:
        parts = [(f"<|system|>\n{_LEGACY_TOOLS_PREAMBLE}{TOOLS_HEADER}", False)]
    for function in schemas:
        parts += [("\n## ", False), (str(function["name"]), True), ("\n\n", False),
                  (json.dumps(function, ensure_ascii=False, indent=4), True), (f"\n{TOOLS_FOOTER}", False)]
    return parts


def _tool_call_turns(message: Message) -> list[tuple[str, str]]:
    """OpenAI `tool_calls` as the templates' (metadata, content) pairs: the name, then the JSON arguments."""
    turns = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call) if isinstance(call, dict) else {}
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        turns.append((str(function.get("name", "")), arguments))
    return turns


def render_segments(
    messages: str | Sequence[Message],
    tools: Sequence[dict] | None = None,
    generation_prefix: str = DEFAULT_GENERATION_PREFIX,
    prompt_format: str = DEFAULT_PROMPT_FORMAT,
) -> Prompt:
    """The chat prompt as `prompt_format`'s published template writes it (see `PROMPT_FORMATS`).

    `[gMASK]<sop>` once; the tool block as a `<|system|>` turn of its own; then `<|role|>\ncontent`
    turns. The 0414 and Z1 templates move every system message to the front, after the tools; the
    legacy one keeps them in place and skips turns with empty content. Z1 trims each non-system
    turn to its text after the last `</think>`. An assistant tool call is `<|assistant|>{name}`
    (0414/Z1 add a space) then `\n{arguments}`. Raises BadParameterError on malformed messages.
    """
    if prompt_format not in PROMPT_FORMATS:
        raise BadParameterError(f"prompt format {prompt_format!r} is not one of {', '.join(PROMPT_FORMATS)}",
                                "prompt_format")
    messages = normalize_messages(messages)
    schemas = tool_schemas(tools)
    legacy = prompt_format == GLM4_9B_CHAT
    parts: list[tuple[str, bool]] = [(PROMPT_PREFIX, False)]
    if schemas:
        parts += _tools_block(schemas, prompt_format)
    if not legacy:
        for message in messages:
            if message["role"] == "system":
                parts += [("<|system|>\n", False), (message["content"], True)]
        messages = [m for m in messages if m["role"] != "system"]
    for message in messages:
        role = "observation" if message["role"] == "tool" else message["role"]
        calls = _tool_call_turns(message) if role == "assistant" else []
        turns = calls or [("", message["content"])]
        for meta, content in turns:
            if prompt_format == GLM_Z1_0414:
                content = content.split(THINK_CLOSE)[-1].strip()
            if legacy and not content:
                continue  # the legacy template writes no turn for empty content
            separator = " \n" if meta and not legacy else "\n"
            parts += [(ROLE_TAGS[role], False), (meta, True), (separator, False), (content, True)]
    parts.append((generation_prefix, False))
    return Prompt(parts)


def render_prompt(
    messages: str | Sequence[Message],
    tools: Sequence[dict] | None = None,
    generation_prefix: str = DEFAULT_GENERATION_PREFIX,
    prompt_format: str = DEFAULT_PROMPT_FORMAT,
) -> str:
    """`render_segments` as plain text (for calibration and evaluation text, which is trusted)."""
    return str(render_segments(messages, tools, generation_prefix, prompt_format))


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
        self.matched: str | None = None  # the stop string that stopped the text

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""  # text already in flight after the stop string is dropped
        if not self.stops:
            return text
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            position, self.matched = min(hits)
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
            decided = self._tool_start(buffer)
            if decided is None:
                return False
            if not decided:
                self._mode, self._buffer = "text", stripped
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
            decided = self._tool_start(buffer)
            if decided is None:
                return False
            if not decided:
                self._mode = "text"
            return True
        if self._mode == "tool":
            self._tool_text += buffer
            self._buffer = ""
            return False
        piece.text += buffer
        self._buffer = ""
        return False

    def _tool_start(self, buffer: str) -> bool | None:
        """True (now in tool mode) if the answer opens with a declared tool's name on a line of its own,
        False if it cannot, None while it still could. Whitespace around the call does not hide it:
        the official GLM-4 demos strip the answer before parsing a call."""
        if not self.tool_names:
            return False
        stripped = buffer.lstrip()
        if not stripped:
            return None
        first_line, newline, _ = stripped.partition("\n")
        if not newline:
            return None if any(name.startswith(first_line.rstrip()) for name in self.tool_names) else False
        if first_line.strip() in self.tool_names:
            self._mode, self._tool_text, self._buffer = "tool", stripped, ""
            return True
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


def finish_answer(matcher: StopMatcher, parser: ReplyParser | None) -> tuple[ParsedPiece, list[ToolCall]]:
    """The end of a streamed answer: what the stop matcher held back, through `parser` (None: raw text),
    joined with what the parser held back; and the tool calls it found. Every generation loop ends so."""
    tail_text = matcher.flush() if not matcher.stopped else ""
    if parser is None:
        return ParsedPiece(text=tail_text), []
    tail = parser.feed(tail_text)
    rest, calls = parser.finish()
    return ParsedPiece(tail.text + rest.text, tail.reasoning + rest.reasoning), calls


_TOOL_CALL = re.compile(r"^\s*([^\n{]+?)\s*\n(.*)$", re.S)


def _not_json(literal: str) -> None:
    raise ValueError(f"{literal} is not JSON")


def parse_tool_calls(text: str, tool_names: Sequence[str] = ()) -> list[ToolCall]:
    """`name\\n{json}` (one or more, as GLM-4 writes them) -> tool calls; [] if it is not one."""
    calls = []
    remaining = text.strip()
    decoder = json.JSONDecoder(parse_constant=_not_json)  # NaN/Infinity are Python's, not JSON's
    while remaining:
        match = _TOOL_CALL.match(remaining)
        if not match:
            return []
        name, rest = match.group(1).strip(), match.group(2).lstrip()
        if tool_names and name not in tool_names:
            return []
        try:
            arguments, end = decoder.raw_decode(rest)
        except ValueError:
            return []
        if not isinstance(arguments, dict):
            return []
        try:
            written = json.dumps(arguments, ensure_ascii=False, allow_nan=False)
        except ValueError:  # a number past float range (1e999) would come back as Infinity: keep the model's JSON
            written = rest[:end]
        calls.append(ToolCall(name, written))
        remaining = rest[end:].strip()
    return calls


def split_reasoning(text: str, starts_in_reasoning: bool = False) -> tuple[str, str]:
    """Whole-text version of the stream split: returns (reasoning, answer)."""
    parser = ReplyParser(in_reasoning=starts_in_reasoning)
    piece = parser.feed(text)
    tail, _ = parser.finish()
    return piece.reasoning + tail.reasoning, piece.text + tail.text
