"""The server's OpenAPI document (`/openapi.json`, shown by FastAPI's Swagger UI at `/docs`).

The request schemas are the pydantic models the endpoints validate with (`openai_request`,
`responses_request`, `anthropic_request`), so the document cannot drift from what is checked. The
routes themselves stay plain Starlette routes that read the raw body (see `server._build_app` for why),
so FastAPI cannot derive the paths: they are listed here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .anthropic_request import MessagesRequest
from .openai_request import ChatCompletionBody, CompletionBody
from .responses_request import ResponsesBody

OPENAPI_VERSION = "3.1.0"  # JSON Schema 2020-12, which pydantic writes
_REF = "#/components/schemas/{model}"
_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
    "code": {"type": ["string", "null"]}}}}}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    said = {400: "a field this server cannot honour, named in `param`", 401: "missing or wrong API key",
            404: "unknown model or id", 413: "body over --max-body-bytes", 503: "the model is still loading"}
    return {str(status): _json(said[status], {"$ref": _REF.format(model="Error")}) for status in statuses}


def _post(summary: str, body: dict[str, Any], answer: str) -> dict[str, Any]:
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": {"application/json": {
        "schema": body}}}, "responses": {"200": _json(answer), **_errors(400, 401, 404, 413, 503)}}}


def _get(summary: str, answer: str, *statuses: int, parameter: str | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {"200": _json(answer), **_errors(*statuses)}}
    if parameter:
        operation["parameters"] = [{"name": parameter, "in": "path", "required": True, "schema": {"type": "string"}}]
    return operation


def openapi_document(title: str, version: str, api_key: bool) -> dict[str, Any]:
    """OpenAPI 3.1 for every endpoint; `api_key` adds the bearer scheme the /v1 endpoints then require."""
    models: list[type[BaseModel]] = [ChatCompletionBody, CompletionBody, ResponsesBody, MessagesRequest]
    refs, top = models_json_schema([(model, "validation") for model in models], ref_template=_REF)
    body = {model: refs[(model, "validation")] for model in models}
    stream = " (with stream: text/event-stream)"
    paths = {
        "/v1/chat/completions": _post("Chat completion (OpenAI)", body[ChatCompletionBody],
                                      "chat.completion" + stream),
        "/v1/completions": _post("Raw text completion (OpenAI)", body[CompletionBody], "text_completion" + stream),
        "/v1/responses": _post("Responses API (OpenAI)", body[ResponsesBody], "response" + stream),
        "/v1/responses/{response_id}": {
            "get": _get("A stored response", "response", 401, 404, parameter="response_id"),
            "delete": _get("Forget a stored response", "response.deleted", 401, 404, parameter="response_id")},
        "/v1/messages": _post("Messages API (Anthropic)", body[MessagesRequest], "message" + stream),
        "/v1/messages/count_tokens": _post("Count a Messages request's input tokens (Anthropic)",
                                           body[MessagesRequest], "{\"input_tokens\": N}"),
        "/v1/models": {"get": _get("The served model", "list of one model", 401)},
        "/v1/models/{model}": {"get": _get("One model", "model", 401, 404, parameter="model")},
        "/health": {"get": _get("200 once the model is loaded", "{\"status\": \"ok\", \"model\": ...}", 503)},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors(401)}}},
    }
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION, "info": {"title": title, "version": version}, "paths": paths,
        "components": {"schemas": {**top.get("$defs", {}), "Error": _ERROR}}}
    if api_key:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
