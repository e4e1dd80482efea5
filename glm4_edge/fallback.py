"""NPU requests that do not fit its static shape, answered on a fallback device instead of failing.

openvino-genai compiles an LLM for the NPU with static shapes: a prompt of at most MAX_PROMPT_LEN
tokens, and a KV cache of MAX_PROMPT_LEN + MIN_RESPONSE_LEN positions, so generation stops when the
cache is full ("OpenVINO GenAI on NPU", docs.openvino.ai/2025/openvino-workflow-generative/
inference-with-genai/inference-with-genai-on-npu.html). A longer prompt fails there, and a long
answer is cut short. `route` checks every request against that shape before it reaches the
pipeline; a request that does not fit goes to a second pipeline on the fallback device (CPU by
default), loaded on first need and shared by every model on the same folder, and its stats say so.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ContextOverflowError, Glm4EdgeError

if TYPE_CHECKING:
    from .model import Chunk, Model

DEFAULT_FALLBACK_DEVICE = "CPU"
NO_FALLBACK = "none"
FALLBACK_CHOICES = ("CPU", "GPU", NO_FALLBACK)


@dataclass(frozen=True)
class StaticShape:
    """The NPU pipeline's compiled limits, in tokens."""

    max_prompt_len: int
    min_response_len: int

    @property
    def kv_capacity(self) -> int:
        """Positions in the static KV cache: prompt plus answer must fit in it."""
        return self.max_prompt_len + self.min_response_len

    def misfit(self, prompt_tokens: int, max_new_tokens: int) -> str | None:
        """Why a request does not fit (one line), or None when it does."""
        if prompt_tokens > self.max_prompt_len:
            return f"prompt of {prompt_tokens} tokens is over MAX_PROMPT_LEN {self.max_prompt_len}"
        if prompt_tokens + max_new_tokens > self.kv_capacity:
            return (f"prompt {prompt_tokens} + max_new_tokens {max_new_tokens} tokens is over MAX_PROMPT_LEN + "
                    f"MIN_RESPONSE_LEN = {self.kv_capacity}")
        return None


def fits(prompt_tokens: int, max_new_tokens: int, max_prompt_len: int, min_response_len: int) -> bool:
    """Whether a request runs on an NPU pipeline compiled for these static lengths (all in tokens)."""
    return StaticShape(max_prompt_len, min_response_len).misfit(prompt_tokens, max_new_tokens) is None


class StaticShapeError(ContextOverflowError):
    """A request does not fit the NPU's static shape and no fallback device is set.

    A ContextOverflowError, so `Chat(trim_history=True)` drops old turns until it fits and the server
    answers 400 context_length_exceeded.
    """

    def __init__(self, reason: str, prompt_tokens: int, max_new_tokens: int, shape: StaticShape,
                 fallback: bool = True):
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context = shape.kv_capacity
        self.reason = reason
        other = (f", or answer such requests on another device with --fallback-device {DEFAULT_FALLBACK_DEVICE}"
                 if fallback else "")
        Glm4EdgeError.__init__(
            self, f"{reason}: the NPU pipeline cannot run it; shorten the prompt or max_new_tokens, or reload with a "
                  f"larger --max-prompt-len/--min-response-len{other}")


class Fallback:
    """A second pipeline on `device`, loaded by `loader` on first use; thread-safe."""

    def __init__(self, device: str, loader: Callable[[], Model]):
        self.device = device
        self._loader = loader
        self._model: Model | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self) -> Model:
        with self._lock:
            if self._model is None:
                try:
                    self._model = self._loader()
                except Glm4EdgeError as error:
                    raise Glm4EdgeError(f"the fallback pipeline on {self.device} did not load: {error}") from None
            return self._model


_shared: dict[tuple[str, str], Fallback] = {}
_shared_lock = threading.Lock()


def shared_fallback(folder: Path, device: str, loader: Callable[[], Model]) -> Fallback:
    """One fallback per (model folder, device) in this process, however many models use it."""
    key = (str(Path(folder).resolve()), device)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Fallback(device, loader)
        return _shared[key]


def check_fallback_device(device: str | None) -> str | None:
    """The normalized fallback device, None for "none"; DeviceError when it is not on this machine."""
    from . import devices

    if device is None or device.strip().lower() == NO_FALLBACK:
        return None
    checked = devices.check_device(device)
    if devices.base_device(checked) == "NPU":
        raise Glm4EdgeError("--fallback-device NPU would have the same static shape; use CPU, GPU or none")
    return checked


def attach(model: Model, shape: StaticShape, fallback_device: str | None = DEFAULT_FALLBACK_DEVICE, *,
           context_length: int | None = None, cache: bool = True) -> None:
    """Give `model` a static shape and, unless `fallback_device` is None or "none", a fallback.

    With a fallback the model's context becomes the checkpoint's own (`context_length`), since a
    request over the static shape still gets an answer; without one it stays the static KV cache.
    Raises DeviceError when the fallback device is not on this machine.
    """
    from .loading import load

    model.static_shape = shape
    device = check_fallback_device(fallback_device)
    if device is None:
        model.fallback = None
        model.context_length = shape.kv_capacity
        return
    model.fallback = shared_fallback(model.path, device, functools.partial(load, model.path, device, cache=cache))
    if context_length:
        model.context_length = context_length


def routes_static_shape(method: Callable[..., Iterator[Chunk]]) -> Callable[..., Iterator[Chunk]]:
    """Decorates `Model._stream_checked`, which every streaming path goes through: a request over the
    model's static shape goes to its fallback.

    The check runs when the stream is opened, before any token, so a request that cannot run is an
    error before a server sends its response headers, never a broken or truncated answer.
    """
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self: Model, *args: Any, **kwargs: Any) -> Iterator[Chunk]:
        shape = getattr(self, "static_shape", None)
        if shape is None:
            return method(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        # Options arrive checked (GenerationOptions), so max_new_tokens is a positive int here.
        prompt, max_new_tokens = bound.arguments["prompt"], bound.arguments["options"].max_new_tokens
        prompt_tokens = self.count_tokens(prompt)
        reason = shape.misfit(prompt_tokens, max_new_tokens)
        if reason is None:
            return method(self, *args, **kwargs)
        if self.fallback is None:
            raise StaticShapeError(reason, prompt_tokens, max_new_tokens, shape)
        target = self.fallback.model()
        return _noted(method(target, *args, **kwargs), reason)

    return wrapper


def _noted(stream: Iterator[Chunk], reason: str) -> Iterator[Chunk]:
    """The fallback's chunks, its final stats marked with why the request left the NPU."""
    try:
        for chunk in stream:
            if chunk.stats is not None:
                chunk.stats.fallback = reason
            yield chunk
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
