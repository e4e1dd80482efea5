"""One answer in the UI: streaming a generation (or a python-tool round) into the chat, and the error
text a visitor sees."""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import ContextOverflowError, Glm4EdgeError
from .loading import openvino_reason
from .model import Chunk, GenerationStats, Model

log = logging.getLogger("glm4_edge.ui")


_DONE = object()


@dataclass
class _Answer:
    """An answer as it streams in, turned into Chatbot messages by `messages`."""

    strings: dict[str, str]
    show_stats: bool = True  # kiosk: False, visitors see no model, device or token rates
    reasoning: str = ""
    text: str = ""
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    finish_reason: str | None = None
    stats: GenerationStats | None = None
    error: str = ""
    trimmed: bool = False
    started: float = field(default_factory=time.monotonic)
    reasoning_s: float | None = None
    progress: Any = None  # prefill.PrefillProgress of a long prompt, until text arrives
    tool_runs: list[list[Any]] = field(default_factory=list)  # [code, CellResult | None] per python call

    def add_tool_event(self, event: Any) -> None:
        if event.result is None:
            self.tool_runs.append([event.code, None])
        elif self.tool_runs:
            self.tool_runs[-1][1] = event.result

    def add(self, chunk: Chunk) -> None:
        if chunk.progress is not None:
            self.progress = chunk.progress
            return
        self.reasoning += chunk.reasoning
        if chunk.text and self.reasoning and self.reasoning_s is None:
            self.reasoning_s = time.monotonic() - self.started
        self.text += chunk.text
        if chunk.finish_reason:
            self.finish_reason, self.stats = chunk.finish_reason, chunk.stats
            self.tool_calls = list(chunk.tool_calls or [])
            if self.reasoning_s is None and self.reasoning:
                self.reasoning_s = time.monotonic() - self.started

    @property
    def size(self) -> int:
        return len(self.reasoning) + len(self.text)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or bool(self.error)

    def messages(self) -> list[dict[str, Any]]:
        s = self.strings
        out: list[dict[str, Any]] = []
        if self.reasoning:
            thinking = not self.text and not self.done
            metadata: dict[str, Any] = {"title": s["thinking"], "status": "pending" if thinking else "done"}
            if self.reasoning_s is not None:
                metadata["duration"] = round(self.reasoning_s, 1)
            out.append({"role": "assistant", "content": self.reasoning, "metadata": metadata})
        for code, cell in self.tool_runs:
            out.append({"role": "assistant", "content": f"```python\n{code}\n```",
                        "metadata": {"title": f"🐍 {s['python']}", "status": "pending" if cell is None else "done"}})
            if cell is not None:
                out.append({"role": "assistant", "content": f"```text\n{cell.as_tool_text()}\n```",
                            "metadata": {"title": f"📤 {s['output']}"}})
        if self.progress is not None and not self.text and not self.done:
            out.append({"role": "assistant", "content": f"⏳ {self.progress.summary()}"})
        for call in self.tool_calls:
            out.append({"role": "assistant", "content": _tool_call_markdown(call),
                        "metadata": {"title": f"🛠 {s['tool_call']}: {call['name']}"}})
        body = self.text
        if self.error:
            body = (body + "\n\n" if body else "") + f"⚠️ **{s['error']}:** {self.error}"
        footer = self.footer()
        if footer:
            body = (body + "\n\n" if body else "") + f'<span class="answer-footer">{footer}</span>'
        if body:
            out.append({"role": "assistant", "content": body})
        return out

    def footer(self) -> str:
        if self.stats is None:
            return ""
        s, stats = self.strings, self.stats
        parts = []
        if self.show_stats:
            ttft = f"{stats.ttft_s * 1000:.0f} ms" if stats.ttft_s is not None else "–"
            rate = f"{stats.tokens_per_s:.1f}" if stats.tokens_per_s else "–"
            parts = [f"{s['ttft']} {ttft}", f"{rate} {s['tok_s']}", f"{stats.generated_tokens} {s['tokens']}",
                     stats.device]
        if self.finish_reason and self.finish_reason != "stop":
            parts.append(s.get(f"finish_{self.finish_reason}", self.finish_reason))
        if self.trimmed:
            parts.append(s["trimmed"])
        return " · ".join(parts)

    def as_turn(self) -> dict[str, Any]:
        turn: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            turn["tool_calls"] = [{"type": "function", "function": dict(call)} for call in self.tool_calls]
        return turn


def _tool_call_markdown(call: dict[str, str]) -> str:
    try:
        arguments = json.dumps(json.loads(call["arguments"]), ensure_ascii=False, indent=2)
    except ValueError:
        arguments = call["arguments"]
    return f"```json\n{arguments}\n```"


def _drop_oldest_turn(turns: list[dict[str, Any]]) -> bool:
    """Forget the oldest user turn and its answer; keep the system prompt and the newest turn."""
    start = 1 if turns and turns[0]["role"] == "system" else 0
    users = [i for i, turn in enumerate(turns) if turn["role"] == "user" and i >= start]
    if len(users) < 2:
        return False
    del turns[start:users[1]]
    return True


def _generate_into(model: Model, messages: list[dict[str, Any]], options: dict[str, Any],
                   cancel: threading.Event, out: queue.SimpleQueue, trim: bool, sandbox: Any = None) -> None:
    """Worker thread: drain the runtime's stream into `out`.

    The runtime holds its lock while its generator is open. Draining it here, instead of in
    Gradio's generator, means the lock is released even if Gradio abandons the page's request.
    """
    try:
        while True:
            try:
                if sandbox is not None:  # the python tool: run_turn appends the calls and results to `messages`
                    from .code_tool import run_turn

                    stream = run_turn(model, messages, sandbox, cancel=cancel, **options)
                else:
                    stream = model.stream(messages, cancel=cancel, **options)
                break
            except ContextOverflowError:
                if not trim or not _drop_oldest_turn(messages):
                    raise
                out.put("trimmed")
        for chunk in stream:
            out.put(chunk)
    except Exception as error:  # noqa: BLE001 - every failure becomes a message in the chat
        out.put(error)
    finally:
        out.put(_DONE)


def _error_text(error: Exception, strings: dict[str, str], kiosk: bool = False) -> str:
    if kiosk:
        # A visitor can act on none of it, and it names the model, the device or token counts: the
        # operator gets the real reason on the console (the journal, under systemd).
        print(f"glm4-edge ui: error: {_reason(error)}", file=sys.stderr, flush=True)
        if not isinstance(error, Glm4EdgeError):
            log.error("generation failed", exc_info=error)
        return strings["generic_error"]
    if isinstance(error, Glm4EdgeError):
        return str(error)
    # OpenVINO reports a lost or hung device as RuntimeError; the operator gets the whole trace.
    log.error("generation failed", exc_info=error)
    return f"{strings['device_error']} ({openvino_reason(error)})"


def _reason(error: Exception) -> str:
    return str(error) if isinstance(error, Glm4EdgeError) else openvino_reason(error)


def _log_answer(result: _Answer) -> None:
    """Kiosk: what visitors no longer see, for the operator (stats only, never what was asked)."""
    if result.stats is not None:
        print(f"glm4-edge ui: answered · {result.stats.summary()} · {result.finish_reason}"
              + (" · trimmed" if result.trimmed else ""), file=sys.stderr, flush=True)
