"""OpenAI Responses API requests (`POST /v1/responses`) as the server's chat requests.

A Responses request is checked field by field (pydantic models of the shapes the `openai` SDK sends),
then rewritten as the /v1/chat/completions body it means and parsed by `openai_request.parse_chat`, so
sampling bounds, tool schemas, `tool_choice` and JSON-schema checks are the chat endpoint's own.
Errors name the Responses field (`input[2].content`, `text.format`, `max_output_tokens`).

Every field the SDK's `responses.create` can send is in one of the tables below (tests/test_clients.py
checks the SDK's typed parameters against them): honoured, informational (accepted; by definition it
does not change the answer), or refused with a 400 naming it when set to anything but OpenAI's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

HONOURED_FIELDS = ("input", "instructions", "model", "stream", "max_output_tokens", "temperature", "top_p",
                   "tools", "tool_choice", "parallel_tool_calls", "text", "previous_response_id", "store",
                   "reasoning", "include")
# `include` values honoured: the reasoning item's opaque copy for stateless clients (see server_responses).
INCLUDABLE = ("reasoning.encrypted_content",)
# Accepted and left alone: the caller's own records and hints. max_tool_calls bounds calls to built-in
# tools, which this server has none of; stream_options only asks for obfuscation padding, which a
# server on the caller's own machine does not need.
INFORMATIONAL_FIELDS = ("user", "metadata", "safety_identifier", "prompt_cache_key", "max_tool_calls",
                        "stream_options")
REFUSED_FIELDS = {
    "background": "background responses are not supported; stream instead",
    "background_options": "background responses are not supported",
    "conversation": "conversations are not stored here; use previous_response_id",
    "prompt": "stored prompt templates are not supported; send input and instructions",
    "top_logprobs": "log-probabilities are not returned",
    "truncation": "the input is never truncated; shorten it yourself",
    "service_tier": "this server has one service tier",
    "moderation": "this server does not moderate",
    "prompt_cache_options": "prompt cache options are not supported",
    "prompt_cache_retention": "the prompt cache lives in memory only",
    "context_management": "context compaction is not supported",
    "image": "this model reads text only",
    "access_programs": "access programs are not supported",
}
DEFAULT_VALUES = {"service_tier": ("auto", "default"), "truncation": ("disabled",),
                  "prompt_cache_retention": ("in_memory", "in-memory")}
TEXT_PARTS = ("input_text", "output_text", "refusal")
MEDIA_PARTS = ("input_image", "input_file", "input_audio")
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


class ResponsesError(ValueError):
    """A request this server cannot honour: `param` names the field, `message` says why (one line)."""

    def __init__(self, param: str, message: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.message, self.code = param, message, code


# --- the request's shapes (openai.types.responses.response_create_params) ---------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class OutputText(_Strict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] | None = None


class Refusal(_Strict):
    type: Literal["refusal"]
    refusal: str


Part = Annotated[InputText | OutputText | Refusal, Field(discriminator="type")]


class MessageItem(_Strict):
    type: Literal["message"]
    role: Literal["user", "assistant", "system", "developer"]
    content: list[Part]
    id: str | None = None
    status: str | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    output: list[Part]
    call_id: str | None = None
    id: str | None = None
    name: str | None = None
    status: str | None = None


class ReasoningItem(_Strict):
    """Earlier thinking sent back: GLM-Z1's template drops it from the prompt, as it does every past turn's."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[Any] = Field(default_factory=list)
    content: list[Any] | None = None
    encrypted_content: str | None = None
    status: str | None = None


InputItem = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem,
                      Field(discriminator="type")]


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # accepted as /v1/chat/completions accepts it: calls are parsed, not enforced


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the one verbosity this model has


class ReasoningConfig(_Strict):
    """Only OpenAI's "ask for nothing": GLM-4 has no effort setting, and Z1 returns its whole thinking."""

    effort: None = None
    summary: None = None
    generate_summary: None = None


class ResponsesBody(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    input: list[InputItem]
    instructions: str | None = None
    model: str | None = None
    stream: bool | None = None
    max_output_tokens: Any = None  # range-checked by the chat path, which names the bound
    temperature: Any = None
    top_p: Any = None
    tools: list[FunctionTool] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    reasoning: ReasoningConfig | None = None
    include: list[str] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    max_tool_calls: int | None = None
    stream_options: dict[str, Any] | None = None


# --- the parsed request ----------------------------------------------------------------------------------


@dataclass
class ResponsesRequest:
    """A checked Responses request: `chat` is the /v1/chat/completions body it means (no history yet)."""

    body: ResponsesBody
    raw: dict[str, Any]  # the request as sent, for the echoed fields of the response object
    messages: list[dict[str, Any]]  # this request's input as chat messages (instructions not included)
    chat: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> bool:
        return self.body.store is not False


def parse(raw: dict[str, Any]) -> ResponsesRequest:
    """Check a /v1/responses body. Raises ResponsesError naming the first field it cannot honour."""
    _refuse_fields(raw)
    body = _validate(_normalized(raw))
    messages = [m for m in (_message(item) for item in body.input) if m is not None]
    chat: dict[str, Any] = {"model": body.model, "stream": body.stream, "max_tokens": body.max_output_tokens,
                            "temperature": body.temperature, "top_p": body.top_p,
                            "parallel_tool_calls": body.parallel_tool_calls}
    if body.tools:
        chat["tools"] = [{"type": "function", "function": tool.model_dump(exclude={"type", "strict"},
                                                                          exclude_none=True)}
                         for tool in body.tools]
    if body.tool_choice is not None:
        chat["tool_choice"] = _tool_choice(body.tool_choice)
    fmt = body.text.format if body.text else None
    if fmt is not None and fmt.type == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise ResponsesError("text.format", "text.format.schema is required with type json_schema")
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": fmt.name, "schema": fmt.schema_}}
    return ResponsesRequest(body=body, raw=raw, messages=messages,
                            chat={k: v for k, v in chat.items() if v is not None})


def _refuse_fields(raw: dict[str, Any]) -> None:
    for name, why in REFUSED_FIELDS.items():
        value = raw.get(name)
        if not value or value in DEFAULT_VALUES.get(name, ()):  # unset, empty, 0 or false asks for nothing
            continue
        raise ResponsesError(name, f"{name} is not supported by this server ({why}); remove it",
                             "unsupported_parameter")
    for index, tool in enumerate(raw.get("tools") or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise ResponsesError(f"tools[{index}]", f"tools[{index}]: the built-in tool {kind!r} is not supported "
                                                    "by this server; only function tools are",
                                 "unsupported_parameter")
    include = raw.get("include")
    for value in include if isinstance(include, list) else []:
        if value not in INCLUDABLE:
            raise ResponsesError("include", f"include {value!r} is not supported by this server (no logprobs or "
                                            f"built-in tool output); it can include {', '.join(INCLUDABLE)}",
                                 "unsupported_value")
    reasoning = raw.get("reasoning")
    if isinstance(reasoning, dict) and any(v is not None for v in reasoning.values()):
        raise ResponsesError("reasoning", "reasoning is not supported by this server (GLM-4 models have no effort "
                                          "or summary setting; Z1 models always reason and return their thinking "
                                          "as a reasoning item); remove it", "unsupported_parameter")
    verbosity = (raw.get("text") or {}).get("verbosity") if isinstance(raw.get("text"), dict) else None
    if verbosity not in (None, "medium"):
        raise ResponsesError("text.verbosity", "text.verbosity is not supported (this model has no verbosity "
                                               "setting); remove it", "unsupported_parameter")
    options = raw.get("stream_options")
    if isinstance(options, dict) and set(options) - {"include_obfuscation"}:
        extra = sorted(set(options) - {"include_obfuscation"})[0]
        raise ResponsesError(f"stream_options.{extra}", f"stream_options.{extra} is not a field this server knows; "
                                                        "remove it", "unknown_parameter")


def _normalized(raw: dict[str, Any]) -> dict[str, Any]:
    """The body with OpenAI's shorthands spelled out: string input and content become text parts."""
    body = {k: v for k, v in raw.items() if k not in REFUSED_FIELDS}  # what is left of them asks for nothing
    if "input" not in body:
        raise ResponsesError("input", "input is required: a string or a list of input items")
    items = body["input"]
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise ResponsesError("input", "input must be a non-empty string or a non-empty list of input items")
    body["input"] = [_normalized_item(index, item) for index, item in enumerate(items)]
    return body


def _normalized_item(index: int, item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    item = dict(item)
    if "type" not in item and "role" in item:  # OpenAI's "easy" message: no type
        item["type"] = "message"
    kind = item.get("type")
    if kind == "item_reference":
        raise ResponsesError(f"input[{index}]", f"input[{index}]: item references are not supported; send the item "
                                                "itself, or continue with previous_response_id",
                             "unsupported_value")
    if kind not in ITEM_TYPES:
        raise ResponsesError(f"input[{index}].type", f"input[{index}]: item type {kind!r} is not supported by this "
                                                     f"server; send one of {', '.join(ITEM_TYPES)}",
                             "unsupported_value")
    key = "content" if kind == "message" else "output" if kind == "function_call_output" else None
    if key is not None:
        parts = item.get(key)
        text_type = "output_text" if item.get("role") == "assistant" else "input_text"
        if isinstance(parts, str):
            item[key] = [{"type": text_type, "text": parts}]
        elif isinstance(parts, list):
            for number, part in enumerate(parts):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in MEDIA_PARTS:
                    raise ResponsesError(f"input[{index}].{key}[{number}]",
                                         f"input[{index}].{key}[{number}]: {kind!r} parts are not supported; this "
                                         "model reads text only", "unsupported_value")
    return item


def _validate(body: dict[str, Any]) -> ResponsesBody:
    try:
        return ResponsesBody.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        path = _path(first["loc"])
        if first["type"] == "extra_forbidden":
            raise ResponsesError(path, f"{path} is not a Responses API field this server knows; remove it",
                                 "unknown_parameter") from None
        if first["type"] == "none_required":  # ReasoningConfig: only nulls
            raise ResponsesError(path, f"{path} is not supported by this server; remove it",
                                 "unsupported_parameter") from None
        raise ResponsesError(path, f"{path}: {first['msg']}", "invalid_type") from None


def _path(loc: tuple) -> str:
    """('input', 0, 'message', 'content', 1, 'input_text', 'text') -> 'input[0].content[1].text'."""
    out = ""
    tags = set(ITEM_TYPES) | set(TEXT_PARTS) | {"function"}
    previous: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in tags:
            pass  # the discriminator pydantic adds after a list index
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out


def _text(parts: list) -> str:
    return "".join(part.refusal if isinstance(part, Refusal) else part.text for part in parts)


def _message(item: Any) -> dict[str, Any] | None:
    """One input item as a chat message; None for reasoning items (see ReasoningItem)."""
    if isinstance(item, MessageItem):
        role = "system" if item.role == "developer" else item.role
        return {"role": role, "content": _text(item.content)}
    if isinstance(item, FunctionCallItem):
        call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        return {"role": "assistant", "content": "", "tool_calls": [call]}
    if isinstance(item, FunctionCallOutputItem):
        return {"role": "tool", "content": _text(item.output), "tool_call_id": item.call_id}
    return None


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function" and isinstance(choice.get("name"), str) and set(choice) <= {"type", "name"}:
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind == "allowed_tools":
        raise ResponsesError("tool_choice", "tool_choice allowed_tools is not supported; send only the allowed "
                                            "tools in tools", "unsupported_value")
    raise ResponsesError("tool_choice", "tool_choice must be 'none', 'auto', 'required' or "
                                        "{\"type\": \"function\", \"name\": ...}; built-in tools are not supported")


# The chat path names chat fields; a Responses client knows these.
_CHAT_TO_RESPONSES = {"messages": "input", "response_format": "text.format", "max_tokens": "max_output_tokens",
                      "max_completion_tokens": "max_output_tokens"}


def responses_param(param: str | None, message: str) -> tuple[str | None, str]:
    """A chat-path error's (param, message) in the Responses API's names."""
    for chat_name, name in _CHAT_TO_RESPONSES.items():
        message = message.replace(chat_name, name)
    return _CHAT_TO_RESPONSES.get(param or "", param), message
