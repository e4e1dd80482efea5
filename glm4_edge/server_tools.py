"""Request fields and tool calling for the OpenAI-compatible server: what is honoured, mapped or refused.

Every field the `openai` SDK can send to /v1/chat/completions and /v1/completions is named in one of
the tables below (tests/test_clients.py checks the SDK's typed parameters against them, so a field a
new SDK adds is noticed): honoured, informational (accepted; by definition it does not change the
answer), or refused with a 400 naming it whenever it asks for something this server cannot do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .model import Chunk, tool_call_stream  # noqa: F401 - tool_call_stream: used by the server from here

# Fields that shape the answer, honoured as OpenAI documents them (n and best_of only as 1).
HONOURED_FIELDS = ("messages", "prompt", "model", "stream", "stream_options", "max_tokens",
                   "max_completion_tokens", "temperature", "top_p", "frequency_penalty", "presence_penalty",
                   "seed", "stop", "n", "best_of", "response_format", "tools", "tool_choice",
                   "parallel_tool_calls", "functions", "function_call", "modalities")
# Accepted and left alone: metadata for the caller's own records, or caching hints (prefix caching here
# is automatic and in memory).
INFORMATIONAL_FIELDS = ("user", "metadata", "safety_identifier", "prompt_cache_key")
# Refused whenever set to anything but OpenAI's own default: value -> why.
REFUSED_FIELDS = {
    "logit_bias": "token biases are not supported",
    "logprobs": "log-probabilities are not returned",
    "top_logprobs": "log-probabilities are not returned",
    "audio": "this model reads and writes text only",
    "prediction": "predicted outputs are not supported",
    "echo": "echoing the prompt is not supported",
    "suffix": "fill-in-the-middle suffixes are not supported",
    "reasoning_effort": "GLM-4 models have no reasoning-effort setting (Z1 models always reason)",
    "web_search_options": "this server has no web search",
    "service_tier": "this server has one service tier",
    "verbosity": "this model has no verbosity setting",
    "store": "completions are not stored",
    "prompt_cache_retention": "the prompt cache lives in memory only",
    "prompt_cache_options": "prompt cache options are not supported",
    "moderation": "this server does not moderate",
    # vLLM's sampling extensions, which clients of local servers often send (top_k is honoured).
    "min_p": "min_p sampling is not supported",
    "min_tokens": "min_tokens is not supported",
    "stop_token_ids": "stop token ids are not supported; send stop strings",
    "include_stop_str_in_output": "stop strings are always cut from the answer",
    "use_beam_search": "beam search is not supported",
    "length_penalty": "length_penalty (beam search) is not supported",
    "guided_json": "send response_format instead",
    "guided_regex": "regex-guided decoding is not supported",
    "guided_choice": "choice-guided decoding is not supported",
    "guided_grammar": "grammar-guided decoding is not supported",
}
# OpenAI's defaults: sending them asks for nothing, so they are accepted.
DEFAULT_VALUES = {"service_tier": ("auto", "default"), "verbosity": ("medium",),
                  "prompt_cache_retention": ("in_memory", "in-memory")}


def check_fields(body: dict[str, Any]) -> str | None:
    """-> the name of a refused field `body` sets (its message from `refusal`), or None."""
    for name in REFUSED_FIELDS:
        value = body.get(name)
        if not value or value in DEFAULT_VALUES.get(name, ()):  # unset, empty or false asks for nothing
            continue
        return name
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or set(modalities) - {"text"}):
        return "modalities"
    return None


def refusal(name: str) -> str:
    if name == "modalities":
        return "modalities: this model writes text only; send [\"text\"] or leave it out"
    return f"{name} is not supported by this server ({REFUSED_FIELDS[name]}); remove it"


# --- legacy functions ---------------------------------------------------------------------------------


def legacy_functions(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Map the deprecated `functions`/`function_call` onto `tools`/`tool_choice`.

    -> (the body to parse, True when the answer must use the legacy `function_call` shape).
    Raises ValueError (message for a 400 on `functions`) when both styles are mixed or malformed.
    """
    functions, call = body.get("functions"), body.get("function_call")
    if functions is None and call is None:
        return body, False
    if body.get("tools") is not None or body.get("tool_choice") is not None:
        raise ValueError("send either functions/function_call or tools/tool_choice, not both")
    if not isinstance(functions, list) or not functions:
        raise ValueError("functions must be a non-empty list of {name, description, parameters}")
    mapped = dict(body)
    mapped.pop("functions", None)
    mapped.pop("function_call", None)
    mapped["tools"] = [{"type": "function", "function": f} for f in functions]
    if call is not None:
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            call = {"type": "function", "function": {"name": call["name"]}}
        elif call not in ("none", "auto"):
            raise ValueError("function_call must be 'none', 'auto' or {\"name\": ...}")
        mapped["tool_choice"] = call
    mapped["parallel_tool_calls"] = False  # the legacy shape holds one call
    return mapped, True


def legacy_shape(payload: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat payload (whole or chunk) with tool_calls rewritten as the legacy function_call."""
    for choice in payload.get("choices", []):
        for key in ("message", "delta"):
            message = choice.get(key)
            if not message or not message.get("tool_calls"):
                continue
            function = message.pop("tool_calls")[0]["function"]
            message["function_call"] = {"name": function["name"], "arguments": function["arguments"]}
        if choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "function_call"
    return payload


def first_call_only(stream: Iterator[Chunk]) -> Iterator[Chunk]:
    """parallel_tool_calls=false: an answer carries at most one call (the first the model wrote)."""
    for chunk in stream:
        if chunk.tool_calls and len(chunk.tool_calls) > 1:
            chunk.tool_calls = chunk.tool_calls[:1]
        yield chunk
