"""What every module of the server shares: its logger and the error answered in OpenAI's shape."""

from __future__ import annotations

import logging
import re
from typing import Any

from .model import openvino_reason

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
