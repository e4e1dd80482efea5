"""OpenAI /v1/chat/completions and /v1/completions requests: pydantic models, then the server's request.

The models mirror OpenAI's request schema (`openai.types.chat.completion_create_params`) for what this
server honours, plus three vLLM-style extensions local clients send (`top_k`, `repetition_penalty`,
`ignore_eos`). Sampling numbers are checked by `glm4_edge.options.check_number`, so a bound reads the
same on every path, and `options()` maps a request onto `GenerationOptions` in this one place.

Which fields are honoured, informational or refused lives in `server_tools` (tests/test_clients.py checks
the SDK's typed parameters against those tables). A refused field set to anything but OpenAI's default
is a 400 naming it; any other field the models do not know is refused by name as unknown, so a typo
(`max_token`) never passes silently. Errors are OpenAI's shape: 400, `invalid_request_error`, `param`
naming the top-level field, a one-line message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from . import glm_format, server_tools, tool_choice
from .errors import BadParameterError
from .images import IMAGE_PART_TYPES
from .json_grammar import ToolCallGrammar
from .options import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, LIMITS, GenerationOptions, check_number, stop_list
from .server_common import ApiError, bad_param
from .server_schema import check_json_schema

# Chat-only fields a raw completion cannot honour.
CHAT_ONLY = ("messages", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
             "modalities", "max_completion_tokens")
# Our codes for the errors the validators below raise (pydantic's own become invalid_type).
_CODES = ("invalid_value", "invalid_type", "unsupported_value")


def _fail(code: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(code, "{message}", {"message": message})  # the message may hold braces


def _ranged(option: str, shown: str):
    """A number in `LIMITS[option]`, named `shown` in errors; kept as sent (5 stays 5, never 5.0)."""
    limit = LIMITS[option]

    def check(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check_number(option, value, shown=shown)
        except BadParameterError as error:
            kinds = (int,) if limit.integer else (int, float)
            wrong_type = isinstance(value, bool) or not isinstance(value, kinds)
            raise _fail("invalid_type" if wrong_type else "invalid_value", str(error)) from None

    kind = int if limit.integer else float
    return Annotated[kind | None, PlainValidator(check, json_schema_input_type=kind | None),
                     Field(description=f"{limit.words()}")]


def _flag(shown: str):
    def check(value: Any) -> bool | None:
        if value is not None and not isinstance(value, bool):
            raise _fail("invalid_type", f"{shown} must be true or false, got {value!r}")
        return value

    return Annotated[bool | None, PlainValidator(check, json_schema_input_type=bool | None)]


def _one(shown: str):
    """n / best_of: one choice per request (the pipeline decodes one sequence)."""

    def check(value: Any) -> int | None:
        if value not in (None, 1) or isinstance(value, bool):
            raise _fail("unsupported_value", f"only {shown}=1 is supported, got {value!r}")
        return value

    return Annotated[int | None, PlainValidator(check, json_schema_input_type=int | None),
                     Field(description="1 only")]


def _stop(value: Any) -> tuple[str, ...]:
    if value is not None and not isinstance(value, (str, list)):
        raise _fail("invalid_type", "stop must be a string or a list of strings")
    try:
        return stop_list(value)
    except BadParameterError as error:
        raise _fail("invalid_value" if "at most" in str(error) else "invalid_type", str(error)) from None


Stop = Annotated[str | list[str] | None, PlainValidator(_stop, json_schema_input_type=str | list[str] | None),
                 Field(description="up to 16 strings that end the answer (never shown)")]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    """include_usage: a last chunk with the usage. Other options (obfuscation padding) are ignored."""

    include_usage: _flag("stream_options.include_usage") = None


class JsonSchemaFormat(_Open):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ContentPart(_Open):
    """A text part, or an image part (data: URLs; GLM-4V models read them, text models refuse them)."""

    type: str = "text"

    @model_validator(mode="after")
    def _known(self) -> ContentPart:
        if self.type not in ("text", *IMAGE_PART_TYPES):
            raise _fail("invalid_value", f"a {self.type!r} content part; glm4-edge reads text and (GLM-4V models) "
                                         "image_url parts")
        if self.type in IMAGE_PART_TYPES:
            # The Python API also takes paths; over HTTP a path would let any client read the server's files.
            extra = self.model_extra or {}
            value = extra.get(self.type, extra.get("image_url"))
            if isinstance(value, dict):
                value = value.get("url")
            if isinstance(value, str) and not value.startswith("data:"):
                remote = value.startswith(("http://", "https://"))
                raise _fail("invalid_value", ("a remote image URL" if remote else "an image URL that is not a data: "
                                              "URL") + "; this server never fetches URLs or reads its own files: "
                            "send the image inline as data:image/png;base64,...")
        return self


class ChatMessage(_Open):
    """One message; other OpenAI message fields (name, tool_calls, tool_call_id, ...) pass on to the model."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class FunctionDefinition(_Open):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # accepted: calls are parsed, not enforced, unless tool_choice forces one


class ChatTool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionDefinition


class _Body(BaseModel):
    """What both endpoints share."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str | None = None
    stream: _flag("stream") = None
    stream_options: StreamOptions | None = None
    max_tokens: _ranged("max_new_tokens", "max_tokens") = None
    temperature: _ranged("temperature", "temperature") = None
    top_p: _ranged("top_p", "top_p") = None
    top_k: _ranged("top_k", "top_k") = None  # vLLM-style extension
    repetition_penalty: _ranged("repetition_penalty", "repetition_penalty") = None  # vLLM-style extension
    presence_penalty: _ranged("presence_penalty", "presence_penalty") = None
    frequency_penalty: _ranged("frequency_penalty", "frequency_penalty") = None
    seed: _ranged("seed", "seed") = None  # signed, as OpenAI's; GenerationOptions maps it onto rng_seed
    stop: Stop = None
    n: _one("n") = None
    best_of: _one("best_of") = None
    ignore_eos: _flag("ignore_eos") = None  # vLLM-style extension, for benchmarks that need a fixed length
    response_format: ResponseFormat | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


class ChatCompletionBody(_Body):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: _ranged("max_new_tokens", "max_completion_tokens") = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: _flag("parallel_tool_calls") = None
    functions: list[dict[str, Any]] | None = Field(default=None, description="deprecated: mapped onto tools")
    function_call: str | dict[str, Any] | None = Field(default=None, description="deprecated: mapped onto "
                                                                                 "tool_choice")
    modalities: list[Literal["text"]] | None = None


class CompletionBody(_Body):
    """POST /v1/completions: one prompt (a string, or a list holding one string)."""

    prompt: str | list[str]


# --- the parsed request -------------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    model: str | None
    options: GenerationOptions  # its max_new_tokens is a placeholder: see `max_tokens`
    max_tokens: int | None = None  # None: whatever the context leaves after the prompt, as OpenAI does
    stream: bool = False
    include_usage: bool = False
    json_schema: str | None = None  # response_format: constrain the answer with this JSON schema

    def generation_options(self, max_new_tokens: int) -> dict[str, Any]:
        """The keyword options `Model.stream` takes, with `max_new_tokens` set."""
        chosen = replace(self.options, max_new_tokens=max_new_tokens)
        return {name: getattr(chosen, name) for name in chosen.__dataclass_fields__}


@dataclass
class ChatRequest(GenerationRequest):
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)  # function schemas; [] when tool_choice none
    forced_tool: dict[str, Any] | None = None  # tool_choice naming a function
    any_tool: ToolCallGrammar | None = None  # tool_choice "required" among several functions
    parallel_tool_calls: bool = True
    legacy_functions: bool = False  # asked with functions/function_call: answer in that shape


@dataclass
class CompletionRequest(GenerationRequest):
    prompt: str = ""


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    """A /v1/chat/completions body -> ChatRequest; raises ApiError (400) naming the first bad field."""
    try:
        body, legacy = server_tools.legacy_functions(body)
    except ValueError as error:
        raise bad_param("functions", str(error)) from None
    checked = _validate(ChatCompletionBody, body, "/v1/chat/completions")
    messages = [message.model_dump(exclude_unset=True, by_alias=True) for message in checked.messages]
    for message in messages:
        if message["role"] == "developer":  # OpenAI's newer name for the system role
            message["role"] = "system"
    try:
        schemas = glm_format.tool_schemas([tool.model_dump(exclude_unset=True) for tool in checked.tools or []])
    except BadParameterError as error:
        raise bad_param("tools", str(error)) from None
    schemas, forced = _tool_choice(checked.tool_choice, schemas)
    any_tool = None
    if isinstance(forced, list):  # "required" among several: one grammar alternative per function
        any_tool = ToolCallGrammar(tuple((tool["name"], _constrainable(tool)) for tool in forced))
        forced = None
    elif forced is not None:
        forced = {**forced, "parameters": _constrainable(forced)}
    json_schema = _json_schema(checked.response_format)
    if (forced is not None or any_tool is not None) and json_schema is not None:  # as Model.stream refuses it
        raise bad_param("response_format", "response_format cannot go with a tool_choice that forces a call: the "
                                           "call's arguments follow the tool's parameters schema")
    max_tokens = checked.max_completion_tokens if checked.max_completion_tokens is not None else checked.max_tokens
    return ChatRequest(**_common(checked, max_tokens), json_schema=json_schema, messages=messages, tools=schemas,
                       forced_tool=forced, any_tool=any_tool, parallel_tool_calls=checked.parallel_tool_calls
                       is not False, legacy_functions=legacy)


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    """A /v1/completions body -> CompletionRequest; raises ApiError (400) naming the first bad field."""
    for name in CHAT_ONLY:
        if body.get(name) is not None:
            raise bad_param(name, f"{name} is a chat field; send it to /v1/chat/completions", "unsupported_parameter")
    checked = _validate(CompletionBody, body, "/v1/completions")
    prompt = checked.prompt
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad_param("prompt", "prompt must be a non-empty string (one prompt per request; token-id "
                                  "prompts are not supported)")
    return CompletionRequest(**_common(checked, checked.max_tokens), json_schema=_json_schema(checked.response_format),
                             prompt=prompt)


def _common(checked: _Body, max_tokens: int | None) -> dict[str, Any]:
    """The fields every request has; the one place a request's sampling becomes GenerationOptions."""
    def given(value: Any, default: Any) -> Any:
        return default if value is None else value

    options = GenerationOptions(
        temperature=given(checked.temperature, DEFAULT_TEMPERATURE), top_p=given(checked.top_p, DEFAULT_TOP_P),
        top_k=given(checked.top_k, 0), repetition_penalty=given(checked.repetition_penalty, 1.0),
        presence_penalty=given(checked.presence_penalty, 0.0), frequency_penalty=given(checked.frequency_penalty, 0.0),
        seed=checked.seed, stop=checked.stop or (), ignore_eos=bool(checked.ignore_eos))
    stream = bool(checked.stream)
    usage = stream and bool(checked.stream_options and checked.stream_options.include_usage)
    return {"model": checked.model, "options": options, "max_tokens": max_tokens, "stream": stream,
            "include_usage": usage}


def _validate(model: type[_Body], body: dict[str, Any], endpoint: str) -> Any:
    refused = server_tools.check_fields(body)
    if refused is not None:
        raise bad_param(refused, server_tools.refusal(refused), "unsupported_parameter")
    # What is left of the refused fields asks for nothing (unset, false, OpenAI's default): drop it.
    body = {key: value for key, value in body.items() if key not in server_tools.REFUSED_FIELDS}
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise _api_error(error, endpoint) from None


def _api_error(error: ValidationError, endpoint: str) -> ApiError:
    # Of a union's failed branches (content: a string, or a list of parts), the one that got furthest
    # says what is wrong; a check of ours says it best.
    first = max(error.errors(), key=lambda e: (e["type"] in _CODES, len(e["loc"])))
    loc = first["loc"]
    param, path = (str(loc[0]), _path(loc)) if loc else ("body", "body")
    kind = first["type"]
    if kind == "extra_forbidden":
        return bad_param(param, f"{param} is not a {endpoint} field this server knows; remove it", "unknown_parameter")
    if kind in _CODES:
        message = first["msg"]
        return bad_param(param, message if message.startswith(path) or param in message
                         else f"{path}: {message}", kind)
    if kind == "missing":
        return bad_param(param, f"{path} is required", "invalid_value")
    return bad_param(param, f"{path}: {first['msg']}", "invalid_type")


_NAME = re.compile(r"[A-Za-z_$][\w$]*")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _path(loc: tuple) -> str:
    """('messages', 0, 'content', 'list[ContentPart]', 1) -> 'messages[0].content[1]' (union tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.fullmatch(part) and part.lower() not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out


def _json_schema(fmt: ResponseFormat | None) -> str | None:
    """response_format -> JSON schema text for openvino-genai's structured output (xgrammar)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json.dumps({"type": "object"})
    schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
    if not isinstance(schema, dict):
        raise bad_param("response_format", "response_format.json_schema.schema must be a JSON schema object")
    check_json_schema(schema)
    return json.dumps(schema)


def _constrainable(tool: dict[str, Any]) -> dict[str, Any]:
    """The tool's parameters, or any JSON object where grammar-constrained decoding cannot honour them."""
    parameters = tool.get("parameters") or {"type": "object"}
    try:
        check_json_schema(parameters, "tools")
    except ApiError:
        return {"type": "object"}
    return parameters


def _tool_choice(choice: Any, schemas: list[dict]) -> tuple[list[dict], dict | list[dict] | None]:
    """-> (tools to show the model, the function it must call, the functions it must call one of, or None)."""
    if choice == "required" and len(schemas) > 1:  # the server constrains the call to one of several names
        return schemas, schemas
    try:
        return tool_choice.choose(choice, schemas)
    except BadParameterError as error:
        raise bad_param("tool_choice", str(error)) from None
