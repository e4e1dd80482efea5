"""GLM-4's built-in `python` tool (code interpreter), run in a `Sandbox`.

glm-4-9b-chat was trained with a `python` tool declared in the system prompt (THUDM/GLM-4,
composite_demo/src/conversation.py `TOOL_SYSTEM_PROMPTS["python"]`, under `# 可用工具` / `## python`).
It calls the tool by answering `python\\n```python\\n{code}\\n```` with no leading newline (an ordinary
answer starts with one), and reads the result as an `<|observation|>` turn. The demo runs the code
in a Jupyter kernel without isolation; here it runs in the sandbox, and the tool prompt states the
sandbox's real timeout and working folder.

`ToolChat` keeps a conversation with the tool enabled: `send(text)` yields `Chunk`s for the answer and
`ToolEvent`s around each call, and continues until the model answers without calling the tool.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import glm_format
from .errors import BadParameterError, Glm4EdgeError
from .model import Chunk, GenerationStats, Model
from .sandbox import CellResult, Sandbox, SandboxLimits

TOOL_NAME = "python"
# How many tool calls in a row before the answer is cut (the composite demo allows 10).
DEFAULT_MAX_CALLS = 10
TOOL_PROMPT = (
    "当你向 `python` 发送包含 Python 代码的消息时，该代码将会在一个有状态的 Jupyter notebook 环境中执行。\n"
    "`python` 返回代码执行的输出，或在执行 {timeout} 秒后返回超时。\n"
    "`{folder}` 将会持久化存储你的文件。在此会话中，`python` 无法访问互联网。"
    "不要使用 `python` 进行任何网络请求或者在线 API 调用，这些在线内容的访问将不会成功。"
)
CALL_PREFIX = f"{TOOL_NAME}\n"
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)


@dataclass
class ToolEvent:
    """A `python` call: yielded once with result None when the code is known, once more with the result."""

    code: str
    result: CellResult | None = None


def tools_block(sandbox: Sandbox) -> str:
    prompt = TOOL_PROMPT.format(timeout=f"{sandbox.limits.wall_s:g}", folder=sandbox.workdir)
    return f"{glm_format.TOOLS_HEADER}\n\n## {TOOL_NAME}\n\n{prompt}"


def with_tool(messages: Sequence[dict[str, Any]], sandbox: Sandbox) -> list[dict[str, Any]]:
    """`messages` with the python tool declared in the system turn (added if there is none)."""
    messages = list(messages)
    block = tools_block(sandbox)
    if messages and messages[0]["role"] == "system":
        messages[0] = {**messages[0], "content": f"{messages[0]['content'].rstrip()}\n\n{block}"}
    else:
        messages.insert(0, {"role": "system", "content": block})
    return messages


def parse_call(raw: str) -> str | None:
    """The code of a `python` call in the model's raw answer, or None when the answer is not a call."""
    if not raw.startswith(CALL_PREFIX):
        return None
    body = raw[len(CALL_PREFIX):]
    blocks = _FENCE.findall(body)
    if blocks:
        return blocks[-1].strip("\n")
    return body.strip("`\n").removeprefix("python\n") or None


def call_message(code: str) -> dict[str, Any]:
    """The assistant turn of a call, rendered back as `<|assistant|>python\\n```python ...` (as the demo does)."""
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function",
                            "function": {"name": TOOL_NAME, "arguments": f"```python\n{code}\n```"}}]}


class ToolChat:
    """A conversation with the `python` tool; the same `send`/`reset`/`messages` shape as `model.Chat`."""

    def __init__(self, model: Model, system: str | None = None, *, limits: SandboxLimits | None = None,
                 max_calls: int = DEFAULT_MAX_CALLS, **defaults: Any):
        self.model = model
        self.system = system
        self.defaults = defaults
        self.max_calls = max_calls
        self.limits = limits
        self.sandbox = Sandbox(limits)
        self.messages: list[dict[str, Any]] = []
        self.last_stats: GenerationStats | None = None
        self.reset()

    def reset(self) -> None:
        """A new conversation: a fresh session and working folder."""
        self.sandbox.close()
        self.sandbox = Sandbox(self.limits)
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.last_stats = None

    def close(self) -> None:
        self.sandbox.close()

    def send(self, text: str | None, cancel: threading.Event | None = None,
             **options: Any) -> Iterator[Chunk | ToolEvent]:
        if text is not None:
            self.messages.append({"role": "user", "content": text})
        return self._turn(cancel, {**self.defaults, **options})

    def _turn(self, cancel: threading.Event | None, options: dict[str, Any]) -> Iterator[Chunk | ToolEvent]:
        for event in run_turn(self.model, self.messages, self.sandbox, cancel=cancel, max_calls=self.max_calls,
                              **options):
            if isinstance(event, Chunk) and event.finish_reason:
                self.last_stats = event.stats
            yield event


def run_turn(model: Model, messages: list[dict[str, Any]], sandbox: Sandbox, *,
             cancel: threading.Event | None = None, max_calls: int = DEFAULT_MAX_CALLS,
             **options: Any) -> Iterator[Chunk | ToolEvent]:
    """Answer the conversation in `messages`, running each `python` call in `sandbox`.

    The turn's messages (calls, results, the answer) are appended to `messages`; the last item
    yielded is a Chunk with finish_reason and stats.
    """
    if options.pop("tools", None):
        raise BadParameterError("the python tool cannot be combined with function tools yet; clear the tools box "
                                "or restart without --tools python", "tools")
    last_stats = None
    for calls in range(max_calls + 1):
        prompt = model.render(with_tool(messages, sandbox))
        raw, final, mode = [], None, None  # mode: None until the first characters decide, "call" | "text"
        parser = glm_format.ReplyParser(in_reasoning=model.starts_in_reasoning)
        text: list[str] = []
        for chunk in model.stream_prompt(prompt, parse=False, cancel=cancel, **options):
            if getattr(chunk, "progress", None) is not None:
                yield chunk  # prefill progress of a long prompt
                continue
            if chunk.finish_reason:
                final = chunk
            raw.append(chunk.text)
            if mode is None:
                joined = "".join(raw)
                if CALL_PREFIX.startswith(joined) and final is None:
                    continue
                mode = "call" if joined.startswith(CALL_PREFIX) else "text"
                fresh = joined
            else:
                fresh = chunk.text
            if mode == "text":
                piece = parser.feed(fresh)
                text.append(piece.text)
                if piece.text or piece.reasoning:
                    yield Chunk(text=piece.text, reasoning=piece.reasoning)
        whole = "".join(raw)
        last_stats = final.stats if final else None
        code = parse_call(whole) if final and final.finish_reason != "cancelled" else None
        if code is None:
            rest, _ = parser.finish()
            if whole.startswith(CALL_PREFIX):  # a call cut short (length limit, Stop): show it as text
                rest = glm_format.ParsedPiece(text=whole)
            text.append(rest.text)
            messages.append({"role": "assistant", "content": "".join(text)})
            yield Chunk(text=rest.text, reasoning=rest.reasoning,
                        finish_reason=final.finish_reason if final else "cancelled",
                        stats=final.stats if final else None)
            return
        if calls == max_calls:
            break  # one call more than allowed: not run
        yield ToolEvent(code)
        result = sandbox.run(code)
        yield ToolEvent(code, result)
        messages.append(call_message(code))
        messages.append({"role": "tool", "content": result.as_tool_text()})
        if cancel is not None and cancel.is_set():
            yield Chunk(finish_reason="cancelled", stats=last_stats)
            return
    message = f"(stopped after {max_calls} python calls in a row)"
    messages.append({"role": "assistant", "content": message})
    yield Chunk(text=message, finish_reason="length", stats=last_stats)


def open_tool_chat(model: Model, system: str | None = None, **defaults: Any) -> ToolChat:
    """A ToolChat, or one clear Glm4EdgeError line when this machine cannot sandbox the tool."""
    try:
        return ToolChat(model, system, **defaults)
    except Glm4EdgeError:
        raise
    except OSError as error:
        raise Glm4EdgeError(f"cannot start the python tool: {error}") from None
