"""OpenAI's `tool_choice` in GLM-4's format, shared by the Python API, the batch path and the server.

GLM-4 calls a tool by answering `name\\n{json arguments}` (see glm_format). To make it call one,
the prompt ends in an assistant turn that already names the function, and openvino-genai's
structured output constrains what follows to the function's parameters schema.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from . import glm_format
from .errors import BadParameterError

CHOICES = ("none", "auto", "required")


def choose(choice: Any, schemas: Sequence[dict]) -> tuple[list[dict], dict | None]:
    """-> (the function schemas to show the model, the one it must call or None).

    `choice` is None or "auto" (the model decides), "none" (no tools shown), "required" (with
    exactly one tool), a function name, or {"type": "function", "function": {"name": ...}}.
    Raises BadParameterError (param "tool_choice") for anything else.
    """
    schemas = list(schemas)
    if choice is None or choice == "auto":
        return schemas, None
    if choice == "none":
        return [], None
    if choice == "required":
        if not schemas:
            raise BadParameterError("tool_choice 'required' needs at least one tool in tools", "tool_choice")
        if len(schemas) != 1:
            raise BadParameterError("tool_choice 'required' needs exactly one tool here; name the function "
                                    "instead: {\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")
        return schemas, schemas[0]
    name = choice if isinstance(choice, str) else (
        choice.get("function", {}).get("name") if isinstance(choice, dict) else None)
    if not isinstance(name, str):
        raise BadParameterError("tool_choice must be 'none', 'auto', 'required', a function name or "
                                "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")
    for schema in schemas:
        if schema["name"] == name:
            return schemas, schema
    raise BadParameterError(f"tool_choice names {name!r}, which is not in tools", "tool_choice")


def forced_prompt(prompt: str, generation_prefix: str, name: str) -> str:
    """`prompt` (rendered with its reply opener) made to start a call of `name`.

    The reply opener may open `<think>` (GLM-Z1): it is replaced by a bare assistant turn. In a
    rendered `glm_format.Prompt` the name is the client's text, so it stays text (never a special token).
    """
    if isinstance(prompt, glm_format.Prompt):
        return prompt.replace_reply_opener(
            generation_prefix, (glm_format.ROLE_TAGS["assistant"], False), (name, True), ("\n", False))
    return prompt[: len(prompt) - len(generation_prefix)] + glm_format.ROLE_TAGS["assistant"] + f"{name}\n"


def arguments_schema(function: dict) -> str:
    """The JSON schema the forced call's arguments are generated under."""
    return json.dumps(function.get("parameters") or {"type": "object"})


def forced_calls(arguments: str, name: str) -> list[dict[str, str]]:
    """The call the model wrote after the prompt named `name`; [] if the arguments are not complete JSON."""
    return [call.as_dict() for call in glm_format.parse_tool_calls(f"{name}\n{arguments}", [name])]
