"""OpenAI-compatible HTTP server for one converted GLM-4 model (`glm4-edge serve`): the app and its routes.

FastAPI (Starlette) + uvicorn. The API surfaces live in their own modules: /v1/chat/completions and
/v1/completions in `server_openai`, /v1/responses in `server_responses`, /v1/messages in
`server_anthropic`; OpenAPI at /openapi.json and /docs (`server_docs`), /metrics (`server_metrics`),
slots and disconnects (`server_scheduling`). Every generation runs in a worker thread and reaches the
event loop through an asyncio queue. The port is bound before the model loads, so `/health` answers 503
while loading. A request waits for one of `max_concurrency` slots; the slot is released only when its
worker thread has really finished, so a client that left cannot leave a generation running behind it.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from . import server_anthropic
from .batching import BatchedModel
from .errors import Glm4EdgeError
from .model import Model
from .server_common import LOG, ApiError
from .server_scheduling import Scheduler

if TYPE_CHECKING:
    from .server_metrics import Metrics

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_CONCURRENCY = 1  # LLMPipeline decodes one request at a time; `serve` batches above 1
DEFAULT_MAX_BODY_BYTES = 8 * 2**20  # ~2M tokens of text: far beyond any context, small enough to buffer
API_KEY_ENV = "GLM4_EDGE_API_KEY"
SHUTDOWN_GRACE_S = 5
OWNER = "glm4-edge"
try:
    _VERSION = version("glm4-edge")
except PackageNotFoundError:  # run from a source tree that was never installed
    _VERSION = "0"
DOCS_PATHS = ("/docs", "/openapi.json")

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
        from .server_metrics import Metrics  # prometheus_client: only when serving, not for every CLI command

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
        self.metrics.ready()
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
        # FastAPI for /docs and /openapi.json, but the endpoints stay plain Starlette routes: they read the
        # raw body themselves (the --max-body-bytes limit applies while it streams in, chunked or not; a
        # body that is not JSON is a 400 in OpenAI's shape), refuse fields by name in each API's own error
        # shape (OpenAI's or Anthropic's), and answer SSE as ASGI apps that cancel the generation however
        # the response ends (`EventStream`). FastAPI's body injection would answer its own 422 shape first.
        # The OpenAPI document is built from the same pydantic models the routes validate with.
        from fastapi import FastAPI
        from starlette.exceptions import HTTPException
        from starlette.middleware import Middleware
        from starlette.routing import Route

        from . import server_openai
        from .server_docs import openapi_document
        from .server_responses import ResponsesApi  # it builds on this module

        self.responses = ResponsesApi(self)
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{name:path}", self.get_model, methods=["GET"]),
            *server_openai.OpenAIEndpoints(self).routes(),
            *self.responses.routes(),
            *server_anthropic.AnthropicEndpoints(self).routes(),
        ]
        middleware = [Middleware(_CountRequests, metrics=self.metrics)]
        if self.config.allow_origins:
            from starlette.middleware.cors import CORSMiddleware

            middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(self.config.allow_origins),
                                            allow_methods=["GET", "POST"],
                                            allow_headers=["Authorization", "Content-Type", *ANTHROPIC_HEADERS]))
        handlers = {ApiError: self._api_error, HTTPException: self._http_error, Exception: self._server_error}
        app = FastAPI(title="glm4-edge", version=_VERSION, routes=routes,
                      middleware=middleware, exception_handlers=handlers, lifespan=self._lifespan,
                      redoc_url=None, swagger_ui_oauth2_redirect_url=None)
        document = openapi_document(app.title, _VERSION, api_key=self._api_key is not None)
        app.openapi = lambda: document  # type: ignore[method-assign]
        return app

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
        from starlette.responses import Response

        from .server_metrics import CONTENT_TYPE

        self._authorize(request)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

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
            self.metrics.request_done(path_label(scope["path"]), status["code"])


def path_label(path: str) -> str:
    """The /metrics label of a request path: the path itself, its route template, or "other"."""
    if path in KNOWN_PATHS:
        return path
    for prefix, template in TEMPLATED_PATHS:
        if path.startswith(prefix) and "/" not in path[len(prefix):]:
            return template
    return "other"


KNOWN_PATHS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/responses",
               *server_anthropic.PATHS, *DOCS_PATHS)
TEMPLATED_PATHS = (("/v1/models/", "/v1/models/{model}"), ("/v1/responses/", "/v1/responses/{response_id}"))
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
