"""`Chat`: a conversation over a `Model`, keeping its turns (and trimming old ones to fit, if asked)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import BadParameterError, ContextOverflowError, Glm4EdgeError
from .model import Chunk, GenerationStats, Model, Reply
from .options import GenerationOptions, option_names


class Chat:
    """A conversation: `send` streams like `Model.stream` and records the turn in `messages`."""

    def __init__(self, model: Model, system: str | None = None, tools: Sequence[dict] | None = None,
                 trim_history: bool = False, **defaults: Any):
        self.model = model
        self.system = system
        self.tools = list(tools or [])
        self.trim_history = trim_history
        # Checked now, so a misspelt or out-of-range default fails here rather than at the first send.
        GenerationOptions.of({k: v for k, v in defaults.items() if k in option_names()})
        unknown = [k for k in defaults if k not in option_names() and k not in ("tool_choice", "json_schema",
                                                                                  "cancel")]
        if unknown:
            raise BadParameterError(f"unknown generation option {unknown[0]!r}; known: "
                                    f"{', '.join(option_names())}, json_schema", unknown[0])
        self.defaults = defaults
        self.messages: list[dict[str, Any]] = []
        self.last_stats: GenerationStats | None = None
        self.reset()

    def reset(self) -> None:
        """A new conversation: only the system prompt is kept; the last answer's stats go with the rest."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.last_stats = None

    def add_tool_result(self, content: Any, name: str | None = None) -> None:
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        message = {"role": "tool", "content": content}
        if name:
            message["name"] = name
        self.messages.append(message)

    def send(self, text: str | None, *, image: Any = None, **options: Any) -> Iterator[Chunk]:
        """Add the user's `text` (None: continue after a tool result) and stream the answer.

        `image` (GLM-4V models: a path, bytes, a data: URL or a PIL image) goes with this turn; a
        text-only model, or a second image in the conversation, raises BadParameterError.
        """
        if image is not None and text is None:
            raise BadParameterError("an image needs a question or instruction with it", "image")
        if text is not None:
            message: dict[str, Any] = {"role": "user", "content": text}
            if image is not None:
                message["image"] = image
            self.messages.append(message)
        merged = {**self.defaults, **options}
        if self.tools and "tools" not in merged:
            merged["tools"] = self.tools
        try:
            stream = self._open_stream(merged)
        except Glm4EdgeError:
            if text is not None:
                self.messages.pop()
            raise
        return self._record(stream)

    def _open_stream(self, options: dict[str, Any]) -> Iterator[Chunk]:
        while True:
            try:
                return self.model.stream(self.messages, **options)
            except ContextOverflowError:
                if not self.trim_history or not self._drop_oldest_turn():
                    raise

    def _drop_oldest_turn(self) -> bool:
        """Drop the oldest user turn and everything up to the next one; keep the system prompt."""
        start = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        users = [i for i, m in enumerate(self.messages) if m["role"] == "user" and i >= start]
        if len(users) < 2:
            return False
        del self.messages[start:users[1]]
        return True

    def _record(self, stream: Iterator[Chunk]) -> Iterator[Chunk]:
        text, reasoning, calls = [], [], None
        try:
            for chunk in stream:
                text.append(chunk.text)
                reasoning.append(chunk.reasoning)
                if chunk.finish_reason:
                    calls, self.last_stats = chunk.tool_calls, chunk.stats
                yield chunk
        finally:
            # Even an answer stopped early stays in the history, as the user saw it.
            reply = Reply("".join(text), "".join(reasoning), calls or [])
            self.messages.append(reply.as_message())
