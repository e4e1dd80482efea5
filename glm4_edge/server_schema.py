"""Checks a client's JSON Schema (response_format, tool parameters) before it reaches the grammar compiler:
`jsonschema` for a well-formed schema, then what xgrammar honours."""

from __future__ import annotations

import math
import re
from typing import Any

from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import Draft202012Validator, validator_for

from .server_common import ApiError, bad_param

# --- JSON schemas for structured output ---------------------------------------------------------------
#
# xgrammar compiles the schema inside the pipeline's first step. A schema it rejects fails that step,
# and a ContinuousBatchingPipeline does not recover: every request in the batch fails and the pipeline
# refuses further work. So schemas are checked here first, against what xgrammar is known to handle;
# keywords it would silently ignore ("not", "multipleOf", ...) are refused rather than dropped.

SCHEMA_ANNOTATIONS = ("title", "description", "default", "examples", "$schema", "$id", "$comment",
                      "deprecated", "readOnly", "writeOnly")
SCHEMA_KEYWORDS = ("type", "properties", "required", "additionalProperties", "items", "prefixItems",
                   "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "minimum",
                   "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const", "anyOf", "oneOf",
                   "allOf", "$ref", "$defs", "definitions")
SCHEMA_FORMATS = ("date-time", "date", "time", "email", "uuid", "ipv4", "ipv6", "uri", "hostname")
PATTERN_ESCAPES = set("dDwWsSnrtfvux") | set(".\\/-^$|?*+()[]{}")
PATTERN_REPEAT = re.compile(r"\{\d+(,\d*)?\}")
SCHEMA_MAX_NODES = 2000
SCHEMA_MAX_DEPTH = 32


class _GrammarLimits:
    """What xgrammar honours, on a schema jsonschema has already found well-formed."""

    def __init__(self, root: dict, param: str):
        self.root, self.param, self.nodes = root, param, 0

    def fail(self, where: str, message: str) -> ApiError:
        return bad_param(self.param, f"{self.param}: JSON schema at {where}: {message}")

    def check(self, schema: Any, where: str = "#", depth: int = 0) -> None:
        self.nodes += 1
        if self.nodes > SCHEMA_MAX_NODES or depth > SCHEMA_MAX_DEPTH:
            raise self.fail(where, f"too large (over {SCHEMA_MAX_NODES} nodes or {SCHEMA_MAX_DEPTH} levels)")
        if isinstance(schema, bool):  # true/false schemas: the metaschema allows them, xgrammar does not
            raise self.fail(where, "must be an object")
        for key in schema:
            if key not in SCHEMA_KEYWORDS and key not in SCHEMA_ANNOTATIONS:
                raise self.fail(where, f"keyword {key!r} is not supported by structured output here")
        self._children(schema, where, depth)
        self._ranges(schema, where)
        if "pattern" in schema:
            self._pattern(schema["pattern"], where)
        if "format" in schema and schema["format"] not in SCHEMA_FORMATS:
            raise self.fail(where, f"format {schema['format']!r} is not one of {', '.join(SCHEMA_FORMATS)}")
        if "$ref" in schema:
            self._ref(schema["$ref"], where)

    def _children(self, schema: dict, where: str, depth: int) -> None:
        for name, child in schema.get("properties", {}).items():
            self.check(child, f"{where}/properties/{name}", depth + 1)
        for key in ("additionalProperties", "items"):
            child = schema.get(key, True)
            if not isinstance(child, bool):
                self.check(child, f"{where}/{key}", depth + 1)
        for key in ("$defs", "definitions"):
            for name, child in schema.get(key, {}).items():
                self.check(child, f"{where}/{key}/{name}", depth + 1)
        for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
            children = schema.get(key, [])
            if key == "allOf" and len(children) > 1:
                raise self.fail(where, "allOf with more than one schema is not supported; merge them")
            for index, child in enumerate(children):
                self.check(child, f"{where}/{key}/{index}", depth + 1)
        if "enum" in schema and not schema["enum"]:  # draft 2020-12 allows an empty enum; nothing fits it
            raise self.fail(where, "enum must be a non-empty list")

    def _ranges(self, schema: dict, where: str) -> None:
        for low_key, high_key in (("minLength", "maxLength"), ("minItems", "maxItems")):
            low, high = schema.get(low_key, 0), schema.get(high_key)
            if high is not None and low > high:
                raise self.fail(where, f"{low_key} {low} is greater than {high_key} {high}")
        bounds = {}
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                bounds[key] = schema[key]
        if schema.get("type") == "integer":  # the integers within the bounds
            lows = [math.ceil(bounds["minimum"])] if "minimum" in bounds else []
            lows += [math.floor(bounds["exclusiveMinimum"]) + 1] if "exclusiveMinimum" in bounds else []
            highs = [math.floor(bounds["maximum"])] if "maximum" in bounds else []
            highs += [math.ceil(bounds["exclusiveMaximum"]) - 1] if "exclusiveMaximum" in bounds else []
            empty = bool(lows and highs) and max(lows) > min(highs)
        else:  # (value, exclusive): the tightest bound on each side
            lows = [(bounds[k], k.startswith("exclusive")) for k in ("minimum", "exclusiveMinimum")
                    if k in bounds]
            highs = [(bounds[k], k.startswith("exclusive")) for k in ("maximum", "exclusiveMaximum")
                     if k in bounds]
            low = max(lows, default=None)
            high = min(highs, key=lambda bound: (bound[0], not bound[1]), default=None)
            empty = low is not None and high is not None and (
                low[0] > high[0] or (low[0] == high[0] and (low[1] or high[1])))
        if empty:
            raise self.fail(where, "no value fits between its minimum and maximum")

    def _pattern(self, pattern: str, where: str) -> None:
        # xgrammar's regex dialect is narrower than Python's (no \\b, no lookaround, no {,n}): allow the
        # common core it parses, and let Python's parser catch what is malformed.
        index, in_class = 0, False
        while index < len(pattern):
            char = pattern[index]
            if char == "\\":
                escape = pattern[index + 1:index + 2]
                length = {"u": 4, "x": 2}.get(escape, 0)
                digits = pattern[index + 2:index + 2 + length]
                if escape not in PATTERN_ESCAPES or len(digits) != length or not all(
                        d in "0123456789abcdefABCDEF" for d in digits):
                    raise self.fail(where, f"pattern escape \\{escape} is not supported")
                index += 2 + length
                continue
            if in_class:
                if char == "[":
                    raise self.fail(where, "pattern may not nest [ inside a character class")
                in_class = char != "]"
            elif char == "[":
                in_class = True
                index += 2 if pattern[index + 1:index + 2] == "]" else 1  # "[]...]": the ] is literal
                continue
            elif char == "(" and pattern[index + 1:index + 2] == "?":
                raise self.fail(where, "pattern may not use (?...) groups")
            elif char == "{" and not PATTERN_REPEAT.match(pattern, index):
                raise self.fail(where, "pattern repeats must be {n}, {n,} or {n,m}")
            index += 1

    def _ref(self, ref: str, where: str) -> None:
        parts = ref.split("/")
        if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
            raise self.fail(where, "$ref must point into this schema: '#/$defs/NAME'")
        if not isinstance(self.root.get(parts[1]), dict) or parts[2] not in self.root[parts[1]]:
            raise self.fail(where, f"$ref {ref!r} names no definition")


def check_json_schema(schema: Any, param: str = "response_format") -> None:
    """Raise a 400 (ApiError naming `param`, one line) unless xgrammar can compile `schema` and honour all of it.

    First `jsonschema` checks the schema against its draft's metaschema (2020-12 unless `$schema` names
    another; `pattern` must be a regular expression), then `_GrammarLimits` refuses what xgrammar would
    reject or silently drop.
    """
    if not isinstance(schema, dict):
        raise bad_param(param, f"{param}: the JSON schema must be an object")
    validator = validator_for(schema, default=Draft202012Validator)
    try:
        validator.check_schema(schema)
    except SchemaError as error:
        error = best_match([error, *error.context]) if error.context else error
        where = "/".join(["#", *(str(part) for part in error.absolute_path)])
        message = " ".join(error.message.split())[:300]  # one line, however long the offending value
        raise bad_param(param, f"{param}: JSON schema at {where}: {message}") from None
    except RecursionError:
        raise bad_param(param, f"{param}: JSON schema too deeply nested") from None
    _GrammarLimits(schema, param).check(schema)
