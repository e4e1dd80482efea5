"""Anthropic Messages API requests: checked (pydantic), then mapped onto the server's chat request.

Every field the `anthropic` SDK types for `messages.create` and `messages.count_tokens` is named in the
tables below (tests/test_server_anthropic.py checks `anthropic.types.message_create_params` against
them): honoured, informational (accepted; it cannot change the answer), or refused with a 400 naming it
whenever it asks for something this server cannot do. Any other field is refused as unknown, by name.
Field names in errors follow Anthropic's own dotted form (`messages.0.content.1`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

if TYPE_CHECKING:
    from .openai_request import ChatRequest


HONOURED_FIELDS = ("model", "messages", "max_tokens", "system", "stop_sequences", "stream", "tools",
                   "tool_choice", "thinking", "output_config",
                   # Not typed by the SDK's current params, but sent by many clients (extra_body here).
                   "temperature", "top_p", "top_k")
# Accepted and left alone: records for the caller, caching hints (prefix caching here is automatic),
# the one service tier this server has.
INFORMATIONAL_FIELDS = ("metadata", "cache_control", "service_tier", "user_profile_id", "workspace_id")
# Refused whenever set to anything but Anthropic's default: value -> why.
REFUSED_FIELDS = {
    "container": "there are no code-execution containers here",
    "diagnostics": "prompt-cache diagnostics are not reported",
    "inference_geo": "the model runs on this machine; there is no region to choose",
    "speed": "this server has one speed",
}
DEFAULT_VALUES = {"speed": ("standard",)}
# output_config.effort: Anthropic's default ("high") asks for nothing; GLM-4 has no other setting.
DEFAULT_EFFORT = "high"
# Block types this server reads in messages; the rest (image, document, search_result, server tool
# results, ...) are refused by name.
TEXT_ONLY = "this model reads text only"
# The OpenAI-named parameters parse_chat reports, as the Anthropic field the client sent.
_FIELD = {"stop": "stop_sequences", "response_format": "output_config.format",
          "parallel_tool_calls": "tool_choice.disable_parallel_tool_use"}


def bad_field(field: str, message: str):
    from .server_common import bad_param

    return bad_param(field, message if message.startswith(field) else f"{field}: {message}")


# --- request models ----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None
    citations: list[dict[str, Any]] | None = None  # from an earlier answer: the text is what counts


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None
    caller: dict[str, Any] | None = None
    toolset_name: str | None = None


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[dict[str, Any]] | None = None
    is_error: bool = False
    cache_control: dict[str, Any] | None = None
    toolset_name: str | None = None


class ThinkingBlock(_Strict):  # earlier turns' thinking: the GLM-Z1 template drops it, as Anthropic may
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(_Strict):
    type: Literal["redacted_thinking"]
    data: str


BLOCKS: dict[str, type[_Strict]] = {"text": TextBlock, "tool_use": ToolUseBlock, "tool_result": ToolResultBlock,
                                    "thinking": ThinkingBlock, "redacted_thinking": RedactedThinkingBlock}


class Message(_Strict):
    role: Literal["user", "assistant", "system"]
    content: str | list[dict[str, Any]]


class Tool(_Strict):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None
    eager_input_streaming: bool | None = None  # a call's input arrives in one delta either way
    input_examples: list[dict[str, Any]] | None = None  # shown to the model with the schema
    defer_loading: bool = False
    strict: bool | None = None
    allowed_callers: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _client_tool(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if kind not in (None, "custom"):  # Anthropic's server tools (bash_..., web_search_...) run on its side
            raise ValueError(f"server tool {kind!r} is not supported here; declare a client tool with name, "
                             "description and input_schema")
        return value


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Thinking(_Strict):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = None
    display: Literal["summarized", "omitted"] | None = None


class OutputConfig(_Strict):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: dict[str, Any] | None = None


class Metadata(_Strict):
    user_id: str | None = None


class MessagesRequest(_Strict):
    model: str
    messages: list[Message]
    max_tokens: int | None = None  # required by /v1/messages, absent from count_tokens (checked there)
    system: str | list[dict[str, Any]] | None = None  # text blocks, checked by `_text`
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    metadata: Metadata | None = None
    cache_control: dict[str, Any] | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None
    # Refused unless unset (checked before validation, by REFUSED_FIELDS).
    container: Any = None
    diagnostics: Any = None
    inference_geo: Any = None
    speed: Any = None


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def _validation_error(error: ValidationError, prefix: str = ""):
    """The first problem pydantic found, as a 400 naming its field (`messages.0.content.1.text`)."""
    first = error.errors(include_url=False)[0]
    union = [p for p in first["loc"] if isinstance(p, str) and ("[" in p or p in ("str", "list"))]
    loc = tuple(p for p in first["loc"] if p not in union)  # pydantic names the union member it tried
    field = ".".join(filter(None, [prefix, _where(loc)])) or "body"
    kind = first["type"]
    if kind == "extra_forbidden":
        return bad_field(field, f"{field} is not a field this server knows; remove it")
    if kind == "missing":
        return bad_field(field, f"{field}: field required")
    if union and kind in ("string_type", "list_type"):
        return bad_field(field, f"{field}: must be a string or a list of content blocks")
    return bad_field(field, f"{field}: {first['msg'].removeprefix('Value error, ')}")


def _validate(model: type[_Strict], value: Any, where: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise _validation_error(error, where) from None


# --- mapping onto the server's chat request ------------------------------------------------------------


@dataclass
class AnthropicRequest:
    chat: ChatRequest
    show_thinking: bool
    omit_thinking: bool


def check_fields(body: dict[str, Any]) -> None:
    """Raise a 400 naming the first refused field `body` sets to something other than its default."""
    for name, why in REFUSED_FIELDS.items():
        value = body.get(name)
        if value in (None, False, "", [], {}) or value in DEFAULT_VALUES.get(name, ()):
            continue
        raise bad_field(name, f"{name} is not supported by this server ({why}); remove it")


def _text(content: str | list[TextBlock] | list[dict[str, Any]], where: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for index, block in enumerate(content):
        if isinstance(block, dict):
            kind = block.get("type")
            if kind != "text":
                raise bad_field(f"{where}.{index}", f"{where}.{index}: {kind!r} blocks are not supported here; "
                                                    f"{TEXT_ONLY}")
            block = _validate(TextBlock, block, f"{where}.{index}")
        parts.append(block.text)
    return "\n".join(parts)


def _blocks(message: Message, where: str) -> list[_Strict]:
    """The message's content blocks, checked; a string is one text block."""
    if isinstance(message.content, str):
        return [TextBlock(type="text", text=message.content)]
    blocks = []
    allowed = {"user": ("text", "tool_result"), "assistant": ("text", "tool_use", "thinking", "redacted_thinking")}
    for index, block in enumerate(message.content):
        at = f"{where}.content.{index}"
        kind = block.get("type")
        if kind is None:
            raise bad_field(f"{at}.type", f"{at}.type: field required")
        if kind not in BLOCKS:
            raise bad_field(at, f"{at}: {kind!r} blocks are not supported; {TEXT_ONLY} (text, tool_use, "
                                "tool_result and thinking blocks)")
        if kind not in allowed[message.role]:
            raise bad_field(at, f"{at}: a {message.role} message cannot hold a {kind!r} block")
        blocks.append(_validate(BLOCKS[kind], block, at))
    return blocks


def openai_messages(request: MessagesRequest) -> list[dict[str, Any]]:
    """Anthropic turns -> the server's OpenAI-style messages: tool results become `tool` turns (GLM-4's
    observation), tool uses become assistant `tool_calls`, thinking from earlier turns is dropped."""
    out: list[dict[str, Any]] = []
    if request.system is not None:
        out.append({"role": "system", "content": _text(request.system, "system")})
    for index, message in enumerate(request.messages):
        where = f"messages.{index}"
        if message.role == "system":
            out.append({"role": "system", "content": _text(message.content, f"{where}.content")})
            continue
        text: list[str] = []
        calls: list[dict[str, Any]] = []
        for number, block in enumerate(_blocks(message, where)):
            if isinstance(block, TextBlock):
                text.append(block.text)
            elif isinstance(block, ToolUseBlock):
                calls.append({"id": block.id, "type": "function", "function": {
                    "name": block.name, "arguments": _json(block.input)}})
            elif isinstance(block, ToolResultBlock):
                if text:  # text before a result stays before it
                    out.append({"role": "user", "content": "\n".join(text)})
                    text = []
                result = _text(block.content or "", f"{where}.content.{number}.content")
                out.append({"role": "tool", "tool_call_id": block.tool_use_id,
                            "content": f"Error: {result}" if block.is_error else result})
        if message.role == "assistant":
            if text or not calls:
                out.append({"role": "assistant", "content": "\n".join(text)})
            if calls:
                out.append({"role": "assistant", "content": "", "tool_calls": calls})
        elif text or isinstance(message.content, str) or not message.content:
            out.append({"role": "user", "content": "\n".join(text)})
    if request.messages and request.messages[-1].role == "assistant":
        raise bad_field("messages", f"messages.{len(request.messages) - 1}: a final assistant message (prefill) "
                                    "is not supported; end with a user message")
    return out


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _tools(tools: list[Tool]) -> list[dict[str, Any]]:
    out = []
    for index, tool in enumerate(tools):
        where = f"tools.{index}"
        if tool.defer_loading:
            raise bad_field(f"{where}.defer_loading", f"{where}.defer_loading: there is no tool search here to "
                                                      "load deferred tools; send the tool without it")
        if tool.strict:
            raise bad_field(f"{where}.strict", f"{where}.strict: calls are constrained to the schema only when "
                                               "tool_choice forces one (any or tool); remove strict")
        if tool.allowed_callers is not None and "direct" not in tool.allowed_callers:
            raise bad_field(f"{where}.allowed_callers", f"{where}.allowed_callers: only direct calls happen here; "
                                                        "include \"direct\"")
        function: dict[str, Any] = {"name": tool.name}
        if tool.description:
            function["description"] = tool.description
        function["parameters"] = tool.input_schema
        if tool.input_examples:
            function["input_examples"] = tool.input_examples
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: ToolChoice | None, tools: list[Tool] | None) -> tuple[Any, bool]:
    """-> (OpenAI's tool_choice, parallel_tool_calls)."""
    if choice is None:
        return None, True
    if choice.type in ("any", "tool") and not tools:
        raise bad_field("tool_choice", f"tool_choice: type {choice.type!r} needs at least one tool in tools")
    if choice.type == "tool":
        if choice.name is None:
            raise bad_field("tool_choice.name", "tool_choice.name: required when type is \"tool\"")
        mapped: Any = {"type": "function", "function": {"name": choice.name}}
    else:
        if choice.name is not None:
            raise bad_field("tool_choice.name", f"tool_choice.name: only type \"tool\" names a tool, not "
                                                f"{choice.type!r}")
        mapped = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    return mapped, not choice.disable_parallel_tool_use


def _response_format(config: OutputConfig | None) -> dict[str, Any] | None:
    if config is None:
        return None
    if config.effort not in (None, DEFAULT_EFFORT):
        raise bad_field("output_config.effort", "output_config.effort: GLM-4 models have no effort setting "
                                                f"(GLM-Z1 always reasons); send {DEFAULT_EFFORT!r} or leave it out")
    if config.format is None:
        return None
    fmt = config.format
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict) or set(fmt) - {"type", "schema"}:
        raise bad_field("output_config.format", "output_config.format must be {\"type\": \"json_schema\", "
                                                "\"schema\": {...}}")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def parse_messages(body: dict[str, Any], *, counting: bool = False) -> AnthropicRequest:
    """A /v1/messages body -> the server's chat request; raises ApiError (400) naming a bad field."""
    from .openai_request import parse_chat
    from .server_common import ApiError

    check_fields(body)
    request = _validate(MessagesRequest, body, "")
    if not counting and request.max_tokens is None:
        raise bad_field("max_tokens", "max_tokens: field required")
    if not request.messages:
        raise bad_field("messages", "messages: at least one message is required")
    if request.thinking is not None and request.thinking.type == "enabled":
        budget = request.thinking.budget_tokens
        if budget is None or budget < 1:
            raise bad_field("thinking.budget_tokens", "thinking.budget_tokens: a positive integer is required "
                                                      "when thinking is enabled")
    choice, parallel = _tool_choice(request.tool_choice, request.tools)
    chat_body: dict[str, Any] = {
        "model": request.model, "messages": openai_messages(request), "stream": bool(request.stream),
        "tools": _tools(request.tools or []), "tool_choice": choice, "parallel_tool_calls": parallel,
        "max_tokens": None if counting else request.max_tokens, "temperature": request.temperature,
        "top_p": request.top_p, "top_k": request.top_k, "stop": request.stop_sequences,
        "response_format": _response_format(request.output_config)}
    if choice is None:
        del chat_body["tool_choice"]
    try:
        chat = parse_chat(chat_body)
    except ApiError as error:
        openai_name = error.param or ""
        field = _FIELD.get(openai_name, openai_name or "body")
        message = error.message
        if field != openai_name and message.startswith(openai_name):  # the client's name for it
            message = field + message[len(openai_name):]
        raise bad_field(field, message) from None
    thinking = request.thinking
    show = thinking is not None and thinking.type != "disabled"
    return AnthropicRequest(chat, show_thinking=show, omit_thinking=show and thinking.display == "omitted")
