"""Generation options: one check, one `GenerationConfig`, one finish reason for every face.

The Python API, the batch path, the server (both engines), the UI and the CLI all build a
`GenerationOptions` and ask it for the pipeline's `GenerationConfig`, so an option means the same
thing everywhere and no path can quietly drop one. A path that cannot honour an option refuses it
by name (`refuse`) instead of ignoring it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import BadParameterError

DEFAULT_MAX_NEW_TOKENS = 512
# GLM-4's own generation_config.json samples at 0.8/0.8; THUDM's chat demos use 0.7/0.8.
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.8
MAX_STOP_STRINGS = 16
# Tokens proposed per step by a draft model or prompt lookup, and the n-gram prompt lookup matches.
DEFAULT_ASSISTANT_TOKENS = 5
DEFAULT_LOOKUP_NGRAM = 3
FINISH_REASONS = ("stop", "length", "tool_calls", "cancelled")
SEED_BITS = 64  # openvino_genai.GenerationConfig.rng_seed is a size_t


@dataclass(frozen=True)
class Limit:
    """An accepted range; `open_low` excludes `low` itself (top_p 0 would keep no token)."""

    low: float
    high: float
    integer: bool = False
    open_low: bool = False
    said: str = ""  # how to say the range when the numbers would not help

    def words(self) -> str:
        if self.said:
            return self.said
        low, high = _number_text(self.low), _number_text(self.high)  # 2147483648, never 2.14748e+09
        kind = "an integer" if self.integer else "a number"
        if self.open_low:
            return f"{kind} above {low} and at most {high}"
        return f"{kind} from {low} to {high}"


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# Ranges follow OpenAI's API where it has the option (temperature, top_p, penalties, seed), so a
# request means the same to the server as to the Python API; the rest are what OpenVINO accepts.
LIMITS: dict[str, Limit] = {
    "max_new_tokens": Limit(1, 2**31, integer=True),
    "temperature": Limit(0.0, 2.0),
    "top_p": Limit(0.0, 1.0, open_low=True),
    "top_k": Limit(0, 2**31, integer=True),
    "repetition_penalty": Limit(0.0, 100.0, open_low=True),
    "presence_penalty": Limit(-2.0, 2.0),
    "frequency_penalty": Limit(-2.0, 2.0),
    "seed": Limit(-(2**63), 2**64 - 1, integer=True, said="a 64-bit integer (signed or unsigned)"),
}


def check_number(name: str, value: Any, shown: str | None = None) -> int | float:
    """`value` if it is in `LIMITS[name]`; else BadParameterError naming `shown` (default `name`)."""
    limit, shown = LIMITS[name], shown or name
    kinds = (int,) if limit.integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise BadParameterError(f"{shown} must be {limit.words()}, got {value!r}", name)
    too_low = value <= limit.low if limit.open_low else value < limit.low
    if too_low or value > limit.high:
        raise BadParameterError(f"{shown} must be {limit.words()}, got {value!r}", name)
    return value


def stop_list(stop: str | Sequence[str] | None, shown: str = "stop") -> tuple[str, ...]:
    """A stop string or a list of them -> a tuple without empty strings."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise BadParameterError(f"{shown} must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP_STRINGS:
        raise BadParameterError(f"{shown}: at most {MAX_STOP_STRINGS} stop strings, got {len(items)}", "stop")
    return tuple(s for s in items if s)


@dataclass(frozen=True)
class GenerationOptions:
    """What to generate: every option `Model.stream` takes besides the conversation itself.

    temperature 0 is greedy decoding (top_p, top_k and seed then do nothing); top_k 0 is no
    top-k cut. Without a seed each sampled answer draws a fresh one, as OpenAI's API does
    (openvino-genai's own default would repeat seed 0 for every answer). `stop` strings end the
    answer and are never shown; ignore_eos keeps generating past the end of turn (benchmarks).
    Raises BadParameterError naming the option when a value is out of range or of the wrong type.
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default=())
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        for name in LIMITS:
            value = getattr(self, name)
            if name == "seed" and value is None:
                continue
            check_number(name, value)
        if not isinstance(self.ignore_eos, bool):
            raise BadParameterError(f"ignore_eos must be true or false, got {self.ignore_eos!r}", "ignore_eos")
        object.__setattr__(self, "stop", stop_list(self.stop))
        if self.seed is not None:
            object.__setattr__(self, "seed", self.seed % 2**SEED_BITS)  # OpenAI's seeds may be negative

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> GenerationOptions:
        """From keyword arguments; an unknown name is a BadParameterError naming it."""
        known = option_names()
        for name in options:
            if name not in known:
                raise BadParameterError(f"unknown generation option {name!r}; known: {', '.join(known)}", name)
        return cls(**options)

    def generation_config(self, base, stop_token_ids: Iterable[int], *, assisted: str | None = None,
                          json_schema: str | None = None, native_stop: bool = False):
        """`base` (the pipeline's own config, a copy) set up for these options.

        `assisted` is "draft" or "prompt_lookup" for speculative decoding; `json_schema` constrains
        the answer through openvino-genai's structured output (xgrammar). `native_stop` also has the
        pipeline end on the stop strings (for the batch path, which has no streamer to stop it); the
        caller still cuts the text, so the stop string itself never shows.
        """
        config = base
        config.max_new_tokens = int(self.max_new_tokens)
        config.stop_token_ids = set(stop_token_ids)
        config.ignore_eos = self.ignore_eos
        config.repetition_penalty = float(self.repetition_penalty)
        config.presence_penalty = float(self.presence_penalty)
        config.frequency_penalty = float(self.frequency_penalty)
        config.apply_chat_template = False
        if assisted:  # speculative decoding or prompt lookup must be told how far to guess
            config.num_assistant_tokens = DEFAULT_ASSISTANT_TOKENS
            if assisted == "prompt_lookup":
                config.max_ngram_size = DEFAULT_LOOKUP_NGRAM
        if self.temperature == 0:
            config.do_sample = False
        else:
            config.do_sample = True
            config.temperature = float(self.temperature)
            config.top_p = float(self.top_p)
            config.top_k = int(self.top_k)
            config.rng_seed = self.seed if self.seed is not None else secrets.randbits(SEED_BITS)
        if native_stop and self.stop:
            config.stop_strings = set(self.stop)
            config.include_stop_str_in_output = True
        if json_schema is not None:  # a JSON schema's text, or a json_grammar.ToolCallGrammar: compact JSON
            from . import json_grammar

            config.structured_output_config = json_grammar.output_config(json_schema)
        return config


def option_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(GenerationOptions))


def refuse(where: str, reasons: Mapping[str, str], given: Mapping[str, Any]) -> None:
    """BadParameterError for the first option in `given` that is set and that `where` cannot honour.

    `reasons` maps an option name to what to do instead; an option counts as set unless it is
    None, False or empty.
    """
    for name, why in reasons.items():
        value = given.get(name)
        if value is not None and value is not False and value != () and value != []:
            raise BadParameterError(f"{where} cannot honour {name}: {why}", name)


def pipeline_reason(reason: Any) -> str | None:
    """openvino_genai.GenerationFinishReason -> "stop" | "length" | None (the pipeline did not say)."""
    name = getattr(reason, "name", None)
    return {"STOP": "stop", "LENGTH": "length", "TOOL_CALL": "stop"}.get(name or "")


def finish_reason(*, cancelled: bool, tool_calls: bool, stop_string: bool, ended: str | None,
                  last_token: int | None, stop_token_ids: Iterable[int], generated: int,
                  max_new_tokens: int) -> str:
    """Why an answer ended, from what ended it, never from a token count alone.

    `ended` is the pipeline's own finish reason ("stop": an end-of-turn token; "length": the
    max_new_tokens limit). An answer that ends its turn on the last allowed token is "stop". Only
    when a pipeline reports nothing does the last token decide, and only then the count.
    """
    if cancelled:
        return "cancelled"
    if tool_calls:
        return "tool_calls"
    if stop_string:
        return "stop"
    if ended is not None:
        return ended
    if last_token is not None and last_token in set(stop_token_ids):
        return "stop"
    return "length" if generated >= max_new_tokens else "stop"
