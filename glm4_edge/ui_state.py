"""One browser tab's state: its `Conversation` (kept in gr.State) and its server-side `_Control`s."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gradio as gr


@dataclass
class Conversation:
    """One tab's chat: what the Chatbot shows and what the model is sent (reasoning stays out)."""

    display: list[dict[str, Any]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    pending: bool = False  # a user turn waits for its answer
    active: float = 0.0  # time.monotonic() of the last use, for the kiosk idle reset
    epoch: int = 0  # `_Control.epoch` when the pending turn was added
    uploaded: bool = False  # an image or a document was put in a box (a kiosk's idle reset empties it)
    draft: str = ""  # the prompt box's text at the last idle check: a change there counts as use


@dataclass
class _Control:
    """Server-side handles for one tab; gr.State values are deep-copied and cannot hold events."""

    cancel: threading.Event = field(default_factory=threading.Event)
    busy: bool = False
    epoch: int = 0  # bumped by Clear, so an answer still streaming for the old chat is dropped
    sandbox: Any = None  # this tab's python-tool session (code_tool), started on its first call

    def close_sandbox(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            sandbox.close()


class _Controls:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tabs: dict[str, _Control] = {}

    def get(self, request: gr.Request | None) -> _Control:
        key = getattr(request, "session_hash", None) or "default"
        with self._lock:
            return self._tabs.setdefault(key, _Control())

    def drop(self, request: gr.Request | None) -> None:
        key = getattr(request, "session_hash", None) or "default"
        with self._lock:
            control = self._tabs.pop(key, None)
        if control is not None:
            control.cancel.set()  # a closed tab must not keep the model busy for everyone else
            control.close_sandbox()
