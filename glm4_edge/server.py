"""OpenAI-compatible HTTP server for one converted GLM-4 model (`glm4-edge serve`).

Starlette + uvicorn. Every generation runs `Model.stream` (or, for raw completions and constrained
decoding, the prompt-level path below) in a worker thread and reaches the event loop through an
asyncio queue. The port is bound before the model loads, so `/health` answers 503 while loading.
A request waits for one of `max_concurrency` slots; the slot is released only when its worker
thread has really finished, so a client that left cannot leave a generation running behind it.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from . import glm_format, server_anthropic, server_tools, tool_choice
from .batching import BatchedModel
from .errors import BadParameterError, ContextOverflowError, Glm4EdgeError
from .fallback import StaticShapeError
from .images import IMAGE_PART_TYPES
from .json_grammar import ToolCallGrammar
from .model import Chunk, Model
from .options import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, check_number, stop_list
from .server_common import LOG, ApiError, _first_line, bad_param
from .server_metrics import Metrics
from .server_openai_format import (
    Collected,
    _ChatFormat,
    _CompletionFormat,
    _Format,
    _LegacyChatFormat,
    _sse,
)
from .server_scheduling import ClientGone, DisconnectWatch, Generation, Scheduler
from .server_schema import check_json_schema

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_CONCURRENCY = 1  # LLMPipeline decodes one request at a time; `serve` batches above 1
DEFAULT_MAX_BODY_BYTES = 8 * 2**20  # ~2M tokens of text: far beyond any context, small enough to buffer
API_KEY_ENV = "GLM4_EDGE_API_KEY"
SHUTDOWN_GRACE_S = 5
OWNER = "glm4-edge"


# Chat-only fields a raw completion cannot honour.
CHAT_ONLY = ("messages", "tools", "tool_choice", "parallel_tool_calls")


# --- errors ------------------------------------------------------------------------------------------


# Model.stream names options as the Python API does; clients know OpenAI's names.
# An image is part of a message in OpenAI's API (an image_url content part).
_OPENAI_PARAM = {"max_new_tokens": "max_tokens", "json_schema": "response_format", "image": "messages"}


def _from_glm4_edge_error(error: Glm4EdgeError) -> ApiError:
    if isinstance(error, StaticShapeError):  # the NPU's limit, not the model's context: say which
        return ApiError(400, str(error), param="messages", code="context_length_exceeded")
    if isinstance(error, ContextOverflowError):
        return ApiError(400, f"This model's maximum context length is {error.context} tokens; the prompt has "
                             f"{error.prompt_tokens} tokens and max_tokens is {error.max_new_tokens} "
                             f"({error.prompt_tokens + error.max_new_tokens} in all). Shorten the prompt or "
                             "lower max_tokens.", param="messages", code="context_length_exceeded")
    if isinstance(error, BadParameterError):
        param = _OPENAI_PARAM.get(error.param or "", error.param)
        return ApiError(400, str(error), param=param, code="invalid_value")
    return ApiError(400, str(error))


# --- requests ----------------------------------------------------------------------------------------


@dataclass
class Sampling:
    max_tokens: int | None = None  # None: whatever the context leaves after the prompt, as OpenAI does
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # vLLM-style extension, for benchmarks that need a fixed length

    def options(self, max_new_tokens: int) -> dict[str, Any]:
        return {"max_new_tokens": max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "repetition_penalty": self.repetition_penalty,
                "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                "seed": self.seed, "stop": self.stop, "ignore_eos": self.ignore_eos}


@dataclass
class GenerationRequest:
    model: str | None
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    json_schema: str | None = None  # response_format: constrain the answer with this JSON schema


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


def _number(body: dict, name: str, default: Any, option: str | None = None) -> Any:
    """body[name], in the range `glm4_edge.options.LIMITS` gives `option` (default: `name`) on every path."""
    value = body.get(name)
    if value is None:
        return default
    option = option or name
    integer = option in ("max_new_tokens", "top_k", "seed")
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise bad_param(name, f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}",
                        "invalid_type")
    try:
        return check_number(option, value, shown=name)
    except BadParameterError as error:
        raise bad_param(name, str(error)) from None


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_param(name, f"{name} must be true or false, got {value!r}", "invalid_type")
    return value


def parse_sampling(body: dict) -> Sampling:
    refused = server_tools.check_fields(body)
    if refused is not None:
        raise bad_param(refused, server_tools.refusal(refused), "unsupported_parameter")
    for name in ("n", "best_of"):  # one choice per request: the pipeline decodes one sequence
        if body.get(name) not in (None, 1):
            raise bad_param(name, f"only {name}=1 is supported, got {body[name]!r}", "unsupported_value")
    max_tokens = _number(body, "max_tokens", None, "max_new_tokens")
    max_tokens = _number(body, "max_completion_tokens", max_tokens, "max_new_tokens")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise bad_param("stop", "stop must be a string or a list of strings", "invalid_type")
    try:
        stops = list(stop_list(stop))
    except BadParameterError as error:
        raise bad_param("stop", str(error), "invalid_value" if "at most" in str(error) else "invalid_type") from None
    return Sampling(
        max_tokens=max_tokens,
        temperature=float(_number(body, "temperature", DEFAULT_TEMPERATURE)),
        top_p=float(_number(body, "top_p", DEFAULT_TOP_P)),
        top_k=_number(body, "top_k", 0),  # vLLM-style extension
        repetition_penalty=float(_number(body, "repetition_penalty", 1.0)),
        presence_penalty=float(_number(body, "presence_penalty", 0.0)),
        frequency_penalty=float(_number(body, "frequency_penalty", 0.0)),
        seed=_number(body, "seed", None),  # signed, as OpenAI's; GenerationOptions maps it onto rng_seed
        stop=stops,
        ignore_eos=_flag(body, "ignore_eos"),
    )


def _json_schema(body: dict) -> str | None:
    """response_format -> JSON schema text for openvino-genai's structured output (xgrammar)."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise bad_param("response_format", "response_format must be {\"type\": \"text\" | \"json_object\" | "
                                           "\"json_schema\", ...}", "invalid_type")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return json.dumps({"type": "object"})
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_param("response_format",
                            "response_format.json_schema.schema must be a JSON schema object")
        check_json_schema(schema)
        return json.dumps(schema)
    raise bad_param("response_format", f"response_format type {kind!r} is not supported; use text, "
                                       "json_object or json_schema")


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_param("stream_options", "stream_options must be an object", "invalid_type")
    return stream, stream and _flag(options, "include_usage")


def _model_field(body: dict) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_param("model", "model must be a string", "invalid_type")
    return model


def parse_chat(body: dict) -> ChatRequest:
    try:
        body, legacy = server_tools.legacy_functions(body)
    except ValueError as error:
        raise bad_param("functions", str(error)) from None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_param("messages", "messages must be a non-empty list of {role, content} objects")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_param("messages", f"messages[{index}] must be an object")
        if message.get("role") == "developer":  # OpenAI's newer name for the system role
            message = {**message, "role": "system"}
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                # Image parts go on to the model: a GLM-4V model reads them (data: URLs only), a text model
                # refuses them by name (`Model.stream`).
                if not isinstance(part, dict) or part.get("type", "text") not in ("text", *IMAGE_PART_TYPES):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise bad_param("messages", f"messages[{index}] has a {kind!r} content part; glm4-edge "
                                                "reads text and (GLM-4V models) image_url parts")
        checked.append(message)
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise bad_param("tools", "tools must be a list of {\"type\": \"function\", \"function\": {...}}",
                        "invalid_type")
    try:
        schemas = glm_format.tool_schemas(tools)
    except BadParameterError as error:
        raise bad_param("tools", str(error)) from None
    schemas, forced = _tool_choice(body.get("tool_choice"), schemas)
    any_tool = None
    if isinstance(forced, list):  # "required" among several: one grammar alternative per function
        any_tool = ToolCallGrammar(tuple((tool["name"], _constrainable(tool)) for tool in forced))
        forced = None
    elif forced is not None:
        forced = {**forced, "parameters": _constrainable(forced)}
    stream, include_usage = _stream_flags(body)
    json_schema = _json_schema(body)
    if (forced is not None or any_tool is not None) and json_schema is not None:  # as Model.stream refuses it
        raise bad_param("response_format", "response_format cannot go with a tool_choice that forces a call: the "
                                           "call's arguments follow the tool's parameters schema")
    parallel = body.get("parallel_tool_calls") is None or _flag(body, "parallel_tool_calls")
    return ChatRequest(model=_model_field(body), sampling=parse_sampling(body), stream=stream,
                       include_usage=include_usage, json_schema=json_schema, messages=checked,
                       tools=schemas, forced_tool=forced, any_tool=any_tool, parallel_tool_calls=parallel,
                       legacy_functions=legacy)


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
    if isinstance(choice, str) and choice not in tool_choice.CHOICES:  # OpenAI takes no bare function name
        raise bad_param("tool_choice", "tool_choice must be 'none', 'auto', 'required' or "
                                       "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    try:
        return tool_choice.choose(choice, schemas)
    except BadParameterError as error:
        raise bad_param("tool_choice", str(error)) from None


def parse_completion(body: dict) -> CompletionRequest:
    for name in CHAT_ONLY:
        if body.get(name) is not None:
            raise bad_param(name, f"{name} is a chat field; send it to /v1/chat/completions", "unsupported_parameter")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad_param("prompt", "prompt must be a non-empty string (one prompt per request; token-id "
                                  "prompts are not supported)")
    stream, include_usage = _stream_flags(body)
    return CompletionRequest(model=_model_field(body), sampling=parse_sampling(body), stream=stream,
                             include_usage=include_usage, json_schema=_json_schema(body), prompt=prompt)


# --- generation (runs in worker threads) --------------------------------------------------------------


def _default_max_tokens(model: Model, prompt_tokens: int) -> int:
    shape = model.static_shape
    if shape is not None and prompt_tokens <= shape.max_prompt_len:  # what the NPU's KV cache leaves: no fallback
        return max(1, shape.kv_capacity - prompt_tokens)
    if not model.context_length:
        return DEFAULT_MAX_NEW_TOKENS
    return max(1, model.context_length - prompt_tokens)


def stream_prompt(model: Model, prompt: str, sampling: Sampling, cancel: threading.Event, *, parse: bool,
                  tool_names: Sequence[str] = (), json_schema: str | ToolCallGrammar | None = None) -> Iterator[Chunk]:
    """`Model.stream_prompt` with OpenAI's default for max_tokens: what the context leaves."""
    max_new_tokens = sampling.max_tokens or _default_max_tokens(model, model.count_tokens(prompt))
    return model.stream_prompt(prompt, parse=parse, tool_names=tool_names, json_schema=json_schema, cancel=cancel,
                               **sampling.options(max_new_tokens))


def open_chat(model: Model, request: ChatRequest, cancel: threading.Event) -> Iterator[Chunk]:
    """Validate and tokenize now (errors surface before any response); generation starts on iteration."""
    stream = _open_chat(model, request, cancel)
    return stream if request.parallel_tool_calls else server_tools.first_call_only(stream)


def _open_chat(model: Model, request: ChatRequest, cancel: threading.Event) -> Iterator[Chunk]:
    sampling = request.sampling
    image_tokens = model.image_tokens_in(request.messages)  # raises for an image a text model cannot see
    if image_tokens and (request.any_tool is not None or request.forced_tool is not None
                         or request.json_schema is not None):
        raise BadParameterError("an image cannot go with response_format or a tool_choice that forces a call yet; "
                                "send it with tool_choice auto and no response_format", "messages")
    if request.any_tool is not None:
        # A tool-call turn whose first tokens are constrained to one declared name, then its arguments.
        prompt = model.render(request.messages, request.tools).replace_reply_opener(
            model.generation_prefix, (glm_format.ROLE_TAGS["assistant"], False))
        raw = stream_prompt(model, prompt, sampling, cancel, parse=False, json_schema=request.any_tool)
        return server_tools.tool_call_stream(raw, [name for name, _ in request.any_tool.tools])
    if request.forced_tool is not None:
        # The same prompt and stream as `Model.stream(tool_choice=...)`; only the schema may differ (see parse_chat).
        name = request.forced_tool["name"]
        prompt = tool_choice.forced_prompt(model.render(request.messages, request.tools), model.generation_prefix, name)
        raw = stream_prompt(model, prompt, sampling, cancel, parse=False,
                            json_schema=tool_choice.arguments_schema(request.forced_tool))
        return server_tools.tool_call_stream(raw, [name], prefix=f"{name}\n")
    if request.json_schema is not None:
        prompt = model.render(request.messages, request.tools)
        return stream_prompt(model, prompt, sampling, cancel, parse=True, json_schema=request.json_schema,
                             tool_names=[t["name"] for t in request.tools])
    max_tokens = sampling.max_tokens
    if max_tokens is None:
        prompt_tokens = model.count_tokens(model.render(request.messages, request.tools)) + image_tokens
        max_tokens = _default_max_tokens(model, prompt_tokens)
    return model.stream(request.messages, tools=request.tools or None, cancel=cancel,
                        **sampling.options(max_tokens))


def open_completion(model: Model, request: CompletionRequest, cancel: threading.Event) -> Iterator[Chunk]:
    return stream_prompt(model, request.prompt, request.sampling, cancel, parse=False,
                         json_schema=request.json_schema)


# --- the application ---------------------------------------------------------------------------------


@dataclass
class ServerConfig:
    load: Callable[[], Model]  # runs in a background thread after the port is bound
    model_name: str
    aliases: tuple[str, ...] = ()  # other names a request may use for the same model
    api_key: str | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    allow_origins: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    engine: str = "one pipeline"  # shown at startup


class OpenAIServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = Metrics()
        self.model: Model | None = None
        self.load_error: str | None = None
        self.created = int(time.time())
        self.on_load_failure: Callable[[], None] = lambda: None
        self.scheduler: Scheduler | None = None
        self._api_key = config.api_key.encode() if config.api_key else None
        self.app = self._build_app()

    # --- lifecycle --------------------------------------------------------------------------------

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            model = self.config.load()
        except Exception as error:  # Glm4EdgeError or an OpenVINO failure: either way, nothing to serve
            self.load_error = str(error) or type(error).__name__
            LOG.error("could not load the model: %s", self.load_error)
            self.on_load_failure()
            return
        self.model = model
        self.metrics.model_ready = 1
        LOG.info("model %s ready on %s in %.1f s", self.config.model_name, model.device,
                 time.perf_counter() - started)

    @asynccontextmanager
    async def _lifespan(self, app):
        self.scheduler = Scheduler(self.config.max_concurrency, self.metrics)
        # Daemon: Ctrl-C during a long load must not wait for it.
        threading.Thread(target=self._load, name="glm4-edge-load", daemon=True).start()
        try:
            yield
        finally:
            self.scheduler.cancel_all()
            if isinstance(self.model, BatchedModel):
                self.model.close()

    # --- plumbing ---------------------------------------------------------------------------------

    def _build_app(self):
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.middleware import Middleware
        from starlette.routing import Route

        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{name:path}", self.get_model, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            *server_anthropic.AnthropicEndpoints(self).routes(),
        ]
        from .server_responses import ResponsesApi  # it builds on this module

        self.responses = ResponsesApi(self)
        routes += self.responses.routes()
        middleware = [Middleware(_CountRequests, metrics=self.metrics)]
        if self.config.allow_origins:
            from starlette.middleware.cors import CORSMiddleware

            middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(self.config.allow_origins),
                                            allow_methods=["GET", "POST"],
                                            allow_headers=["Authorization", "Content-Type", *ANTHROPIC_HEADERS]))
        handlers = {ApiError: self._api_error, HTTPException: self._http_error, Exception: self._server_error}
        return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers,
                         lifespan=self._lifespan)

    @staticmethod
    def _error_response(error: ApiError, request):
        from starlette.responses import JSONResponse

        if server_anthropic.is_anthropic_path(request.url.path):  # Anthropic clients parse their own shape
            return server_anthropic.error_response(error)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def _api_error(self, request, error: ApiError):
        return self._error_response(error, request)

    async def _http_error(self, request, error):
        message = str(error.detail)
        if error.status_code == 404:  # an unknown path: say which ones there are
            paths = [route.path.replace(":path}", "}") for route in self.app.routes if hasattr(route, "path")]
            message = (f"{message}: this server has no {request.method} {request.url.path}; it has "
                       f"{', '.join(dict.fromkeys(paths))}")
        return self._error_response(ApiError(error.status_code, message, code=_status_code(error)), request)

    async def _server_error(self, request, error: Exception):
        return self._error_response(ApiError(500, "internal server error; see the server log",
                                             kind="server_error"), request)

    def _authorize(self, request) -> None:
        if self._api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        offered = [token] if scheme.lower() == "bearer" else []
        offered += request.headers.getlist("x-api-key")  # how Anthropic clients send the key
        # compare_digest on bytes: no early exit that would leak how much of the key matched.
        if not any([hmac.compare_digest(key.strip().encode(), self._api_key) for key in offered]):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def _ready_model(self) -> Model:
        if self.model is None:
            message = (f"the model failed to load: {self.load_error}" if self.load_error
                       else "the model is still loading; retry shortly")
            raise ApiError(503, message, kind="server_error", code="model_not_ready",
                           headers={"Retry-After": "5"})
        return self.model

    def _check_model_name(self, name: str | None) -> None:
        if name is not None and name not in (self.config.model_name, *self.config.aliases):
            raise ApiError(404, f"The model {name!r} does not exist; this server serves "
                                f"{self.config.model_name!r}", param="model", code="model_not_found")

    async def _read_json(self, request) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes is over the {limit}-byte limit",
                           code="request_too_large")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:  # chunked uploads have no Content-Length to check up front
                raise ApiError(413, f"request body is over the {limit}-byte limit", code="request_too_large")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "could not parse the JSON body of the request", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        return data

    # --- endpoints --------------------------------------------------------------------------------

    async def health(self, request):
        from starlette.responses import JSONResponse

        failure = self.model.engine.failure if isinstance(self.model, BatchedModel) else None
        if failure:
            return JSONResponse({"status": "error", "model": self.config.model_name, "error": failure},
                                status_code=503)
        if self.model is not None:
            return JSONResponse({"status": "ok", "model": self.config.model_name})
        status = "error" if self.load_error else "loading"
        return JSONResponse({"status": status, "model": self.config.model_name, "error": self.load_error},
                            status_code=503, headers={"Retry-After": "5"})

    async def metrics_endpoint(self, request):
        from starlette.responses import PlainTextResponse

        self._authorize(request)
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    def _model_card(self) -> dict[str, Any]:
        """OpenAI's model object, plus what the model takes in (vLLM-style extra fields clients ignore):
        `glm4_edge.input_modalities` is ["text", "image"] for GLM-4V models. Before the model has loaded
        it cannot say, so the extra field is left out."""
        card = {"id": self.config.model_name, "object": "model", "created": self.created, "owned_by": OWNER}
        if self.model is not None:
            card["glm4_edge"] = {"input_modalities": ["text", "image"] if self.model.accepts_images else ["text"],
                                 "context_length": self.model.context_length}
        return card

    async def list_models(self, request):
        from starlette.responses import JSONResponse

        self._authorize(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def get_model(self, request):
        from starlette.responses import JSONResponse

        self._authorize(request)
        self._check_model_name(request.path_params["name"])
        return JSONResponse(self._model_card())

    async def chat_completions(self, request):
        self._authorize(request)
        body = await self._read_json(request)
        chat = parse_chat(body)
        self._check_model_name(chat.model)
        fmt = (_LegacyChatFormat if chat.legacy_functions else _ChatFormat)(self.config.model_name)
        return await self._generate(request, chat, open_chat, fmt)

    async def completions(self, request):
        self._authorize(request)
        body = await self._read_json(request)
        completion = parse_completion(body)
        self._check_model_name(completion.model)
        return await self._generate(request, completion, open_completion,
                                    _CompletionFormat(self.config.model_name))

    async def _generate(self, request, parsed: GenerationRequest, opener: Callable, fmt: _Format):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse, Response

        model = self._ready_model()
        assert self.scheduler is not None
        cancel = threading.Event()
        try:  # rendering and tokenizing can take a while on long prompts: not on the event loop
            stream = await run_in_threadpool(opener, model, parsed, cancel)
        except Glm4EdgeError as error:
            raise _from_glm4_edge_error(error) from None
        watch = DisconnectWatch(request.receive, cancel)
        try:
            generation = await self.scheduler.start(stream, cancel, watch)
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
        return _EventStream(generation, self._sse(generation, first, fmt, parsed.include_usage))

    async def _sse(self, generation: Generation, first: Chunk | None, fmt: _Format,
                   include_usage: bool) -> AsyncIterator[str]:
        # Starlette cancels this generator when the client disconnects; `finally` then stops the model.
        try:
            yield _sse(fmt.opening(include_usage))
            chunk = first
            while chunk is not None:
                for payload in fmt.pieces(chunk, include_usage):
                    yield _sse(payload)
                if chunk.finish_reason and include_usage:
                    yield _sse(fmt.usage(chunk.stats))
                chunk = await generation.next()
            yield _sse("[DONE]")
        except Exception as error:  # headers are out: report in-band, as OpenAI does
            LOG.exception("generation failed mid-stream")
            yield _sse(ApiError(500, _first_line(error), kind="server_error").body())
            yield _sse("[DONE]")
        finally:
            generation.cancel.set()


class _EventStream:
    """An SSE response that stops its generation however the response ends.

    Starlette cancels a streaming body when it sees the client leave, and the body's `finally` stops
    the model; but a body generator that is merely abandoned (a failed send, a server shutting down)
    runs its `finally` only when the garbage collector gets to it, and until then the generation
    decodes on in its slot. Here a disconnect watch runs beside the body, and the response's own
    `finally` sets the cancel event and closes the body, whatever ended it.
    """

    def __init__(self, generation: Generation, body: AsyncIterator[str]):
        self.generation, self.body = generation, body

    async def __call__(self, scope, receive, send) -> None:
        from starlette.responses import StreamingResponse

        response = StreamingResponse(self.body, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watch = DisconnectWatch(receive, self.generation.cancel)
        try:
            # The watch reads `receive`; Starlette's own listener gets a receive that waits with it.
            await watch.race(response(scope, watch.wait_gone, send))
        except ClientGone:
            pass
        finally:
            watch.stop()
            self.generation.cancel.set()
            await self.body.aclose()  # type: ignore[attr-defined]


def _status_code(error) -> str | None:
    return {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)


class _CountRequests:
    """ASGI middleware: count answered requests by path and status for /metrics."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            # Labels come from a fixed set, so scanners cannot grow the metrics without bound.
            path = scope["path"]
            label = path if path in KNOWN_PATHS else "/v1/models/{model}" if path.startswith(
                "/v1/models/") else "other"
            self.metrics.request_done(label, status["code"])


KNOWN_PATHS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/responses",
               *server_anthropic.PATHS)
ANTHROPIC_HEADERS = ("X-Api-Key", "Anthropic-Version", "Anthropic-Beta")


# --- running -----------------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """Bind before loading, so a port clash fails fast and /health answers while the model loads."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise Glm4EdgeError(f"--host {host}: cannot resolve it ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise Glm4EdgeError(f"cannot listen on {host}:{port} ({error.strerror}); pick another --port or "
                            "stop what is using it") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def api_key_from_env(explicit: str | None) -> str | None:
    return explicit or os.environ.get(API_KEY_ENV) or None


def serve(config: ServerConfig, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "info",
          announce: Callable[[str], None] = print) -> None:
    """Bind, answer /health at once, load the model in the background, serve until SIGINT/SIGTERM."""
    import uvicorn

    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    server = OpenAIServer(config)
    uv = uvicorn.Server(uvicorn.Config(server.app, log_level=log_level, lifespan="on",
                                       timeout_graceful_shutdown=SHUTDOWN_GRACE_S, server_header=False))

    def stop() -> None:
        uv.should_exit = True

    server.on_load_failure = stop
    # A client leaving mid-stream is routine here; asyncio would log each write that raced the hang-up.
    logging.getLogger("asyncio").addFilter(lambda record: "socket.send() raised" not in record.getMessage())
    shown = f"[{host}]" if ":" in host else host
    announce(f"glm4-edge serve: {config.model_name} on http://{shown}:{bound_port}/v1 "
             f"({config.engine}, {config.max_concurrency} at a time; loading, GET /health says 200 "
             "when ready)")
    try:
        uv.run(sockets=[sock])
    finally:
        sock.close()
    if server.load_error:
        raise Glm4EdgeError(f"could not load the model: {server.load_error}")
