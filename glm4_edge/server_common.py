"""What every module of the server shares: its logger and the error answered in OpenAI's shape."""

from __future__ import annotations

import logging
import re
from typing import Any

from .errors import BadParameterError, ContextOverflowError, Glm4EdgeError
from .fallback import StaticShapeError
from .loading import openvino_reason

# A child of uvicorn's logger: our lines share its handler, format and --log-level.
LOG = logging.getLogger("uvicorn.error.glm4_edge")


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad_param(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


# xgrammar prefixes its messages with "[hh:mm:ss] /build/path/file.cc:123: ": noise to a client.
_NATIVE_PREFIX = re.compile(r"^(\[[\d:]+\]\s*)?(\S+\.(cc|cpp|hpp|h):\d+:\s*)?")


def _first_line(error: BaseException) -> str:
    return _NATIVE_PREFIX.sub("", openvino_reason(error, limit=500))


# Model.stream names options as the Python API does; clients know OpenAI's names.
# An image is part of a message in OpenAI's API (an image_url content part).
_OPENAI_PARAM = {"max_new_tokens": "max_tokens", "json_schema": "response_format", "image": "messages"}


def from_glm4_edge_error(error: Glm4EdgeError) -> ApiError:
    """A runtime error (bad option, context overflow, the NPU's static shape) as a 400 in OpenAI's names."""
    if isinstance(error, StaticShapeError):  # the NPU's limit, not the model's context: say which
        return ApiError(400, str(error), param="messages", code="context_length_exceeded")
    if isinstance(error, ContextOverflowError):
        return ApiError(400, f"This model's maximum context length is {error.context} tokens; the prompt has "
                             f"{error.prompt_tokens} tokens and max_tokens is {error.max_new_tokens} "
                             f"({error.prompt_tokens + error.max_new_tokens} in all). Shorten the prompt"
                             + (" or lower max_tokens." if error.prompt_tokens < error.context else "."),
                             param="messages", code="context_length_exceeded")
    if isinstance(error, BadParameterError):
        param = _OPENAI_PARAM.get(error.param or "", error.param)
        return ApiError(400, str(error), param=param, code="invalid_value")
    return ApiError(400, str(error))
