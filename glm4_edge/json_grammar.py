"""Compact grammars for structured output: JSON schemas as EBNF with no free whitespace.

openvino-genai hands a `json_schema` to xgrammar with its default of any whitespace between JSON
tokens, so a small or unsure model can write `{"result":1` and then newlines until max_tokens (the
grammar lets it). Here the schema becomes an xgrammar EBNF grammar with no whitespace but at most one
space after each `,` and `:` (the forms `json.dumps` writes, compact or default), and whose numbers
have at most 16 integer and 16 fraction digits (llama.cpp's json-schema-to-grammar bounds, for the
same reason: an unbounded digit run is another way to never finish).

Schemas using keywords an EBNF cannot express simply (`pattern`, `format`, numeric bounds) keep
xgrammar's own schema compiler (`StructuredOutputConfig.JSONSchema`), whose whitespace is free.

`output_config` builds the `openvino_genai.StructuredOutputConfig` for either a JSON schema (text)
or a `ToolCallGrammar`: GLM-4's tool-call turn `name\\n{arguments}` for one of several functions
(`tool_choice: "required"`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_INTEGER_DIGITS = 16  # llama.cpp json-schema-to-grammar: [1-9][0-9]{0,15}
MAX_FRACTION_DIGITS = 16
MAX_EXPONENT_DIGITS = 3  # 1e999 is past float64 already
# Keywords the EBNF below does not express: such a schema is left to xgrammar's JSON-schema compiler.
XGRAMMAR_ONLY_KEYWORDS = ("pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")

# At most one space after each separator: json.dumps's default form, which models have read most, and
# still no room to pad.
_SEPARATORS = {"json_comma": '"," " "?', "json_colon": '":" " "?'}
_BASIC_RULES = {
    "json_char": r'[^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "json_string": r'"\"" json_char* "\""',
    "json_integer": f'"-"? ("0" | [1-9] [0-9]{{0,{MAX_INTEGER_DIGITS - 1}}})',
    "json_number": (f'json_integer ("." [0-9]{{1,{MAX_FRACTION_DIGITS}}})? '
                    f'([eE] [-+]? [0-9]{{1,{MAX_EXPONENT_DIGITS}}})?'),
    "json_boolean": '"true" | "false"',
    "json_null": '"null"',
    "json_value": "json_object | json_array | json_string | json_number | json_boolean | json_null",
    "json_object": '"{" (json_string json_colon json_value (json_comma json_string json_colon json_value)*)? "}"',
    "json_array": '"[" (json_value (json_comma json_value)*)? "]"',
}


@dataclass(frozen=True)
class ToolCallGrammar:
    """GLM-4's tool-call turn for one of `tools`: a function name, a newline, its JSON arguments.

    tools: (name, JSON schema of the arguments) pairs, in the order the request declared them.
    """

    tools: tuple[tuple[str, dict[str, Any]], ...]


def literal(text: str) -> str:
    """`text` as an EBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped.replace(chr(9), chr(92) + "t")}"'


def needs_xgrammar(schema: Any) -> bool:
    """True when `schema` (anywhere inside) uses a keyword this module's EBNF does not express."""
    if not isinstance(schema, dict):
        return False
    if any(key in schema for key in XGRAMMAR_ONLY_KEYWORDS):
        return True
    children: list[Any] = []
    for key in ("properties", "$defs", "definitions"):
        children += list((schema.get(key) or {}).values())
    for key in ("items", "additionalProperties"):
        children.append(schema.get(key))
    for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
        children += list(schema.get(key) or [])
    return any(needs_xgrammar(child) for child in children)


class _Builder:
    """One grammar's rules; `rule_for(schema)` names the rule that matches `schema`'s compact JSON."""

    def __init__(self, root: dict[str, Any]):
        self.root = root
        self.rules: dict[str, str] = {}
        self._refs: dict[str, str] = {}
        self._count = 0

    def _new(self, body: str) -> str:
        self._count += 1
        name = f"r{self._count}"
        self.rules[name] = body
        return name

    def _basic(self, name: str) -> str:
        for rule in _needs(name):
            self.rules.setdefault(rule, _BASIC_RULES[rule])
        return name

    def rule_for(self, schema: Any) -> str:
        if schema is True or schema == {}:
            return self._basic("json_value")
        if not isinstance(schema, dict):
            raise ValueError("a JSON schema must be an object or a boolean")
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "const" in schema:
            return self._new(literal(_compact(schema["const"])))
        if "enum" in schema:
            return self._new(" | ".join(literal(_compact(value)) for value in schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                base = {k: v for k, v in schema.items() if k != key}
                return self._new(" | ".join(self.rule_for({**base, **option}) for option in schema[key]))
        if "allOf" in schema:  # the server refuses allOf with more than one schema
            base = {k: v for k, v in schema.items() if k != "allOf"}
            return self.rule_for({**base, **schema["allOf"][0]})
        kinds = schema.get("type")
        if isinstance(kinds, list):
            return self._new(" | ".join(self._typed(schema, kind) for kind in kinds))
        if kinds is None:
            if "properties" in schema or "additionalProperties" in schema:
                kinds = "object"
            elif "items" in schema or "prefixItems" in schema:
                kinds = "array"
            else:
                return self._basic("json_value")
        return self._typed(schema, kinds)

    def _ref(self, ref: str) -> str:
        if ref not in self._refs:
            _, section, name = ref.split("/")
            self._refs[ref] = rule = self._new("")  # named first: a definition may refer to itself
            self.rules[rule] = self.rule_for(self.root[section][name])
        return self._refs[ref]

    def _typed(self, schema: dict[str, Any], kind: str) -> str:
        if kind == "object":
            return self._object(schema)
        if kind == "array":
            return self._array(schema)
        if kind == "string":
            low, high = schema.get("minLength", 0), schema.get("maxLength")
            if low == 0 and high is None:
                return self._basic("json_string")
            self._basic("json_char")
            return self._new(f'"\\"" {_repeat("json_char", low, high)} "\\""')
        return self._basic({"integer": "json_integer", "number": "json_number", "boolean": "json_boolean",
                            "null": "json_null"}[kind])

    def _object(self, schema: dict[str, Any]) -> str:
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        extra = schema.get("additionalProperties", not properties)  # as xgrammar's strict mode
        pairs = [(literal(_compact(name)) + ' json_colon ' + self.rule_for(child), name in required)
                 for name, child in properties.items()]
        extra_pair = None
        if extra is not False:
            value = self.rule_for(True if extra is True else extra)
            extra_pair = f'{self._basic("json_string")} json_colon {value}'
        # tail[i][first]: properties i.. in order, `first` when nothing has been written yet.
        tail: dict[bool, str] = {}
        if extra_pair is None:
            tail = {True: '""', False: '""'}
        else:
            more = self._new(f'(json_comma {extra_pair})*')
            tail = {True: self._new(f'({extra_pair} {more})?'), False: more}
        for pair, is_required in reversed(pairs):
            later = tail
            if is_required:
                tail = {True: self._new(f"{pair} {later[False]}"),
                        False: self._new(f'json_comma {pair} {later[False]}')}
            else:
                tail = {True: self._new(f"{pair} {later[False]} | {later[True]}"),
                        False: self._new(f'(json_comma {pair})? {later[False]}')}
        return self._new(f'"{{" {tail[True]} "}}"')

    def _array(self, schema: dict[str, Any]) -> str:
        prefix = [self.rule_for(child) for child in schema.get("prefixItems", [])]
        item_schema = schema.get("items", True)
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if item_schema is False or (high is not None and high <= len(prefix)):
            count = len(prefix) if high is None else min(high, len(prefix))
            items = prefix[:max(count, low)]
            return self._new('"[" ' + ' json_comma '.join(items) + ' "]"' if items else '"[" "]"')
        item = self.rule_for(item_schema)
        if prefix:  # the prefix, then more items
            rest_low = max(0, low - len(prefix))
            rest_high = None if high is None else high - len(prefix)
            body = ' json_comma '.join(prefix) + " " + _repeat(f"(json_comma {item})", rest_low, rest_high)
            if low < len(prefix):  # shorter arrays are valid too: each prefix length from `low`
                shorter = [' json_comma '.join(prefix[:n]) for n in range(max(low, 1), len(prefix))]
                body = " | ".join([f"({body})", *shorter])
            empty = ' | ""' if low == 0 else ""
            return self._new(f'"[" ({body}{empty}) "]"')
        if high == 0:
            return self._new('"[" "]"')
        more = _repeat(f"(json_comma {item})", max(0, low - 1), None if high is None else high - 1)
        return self._new(f'"[" {item} {more} "]"' if low > 0 else f'"[" ({item} {more})? "]"')

    def text(self, root_rule: str) -> str:
        lines = [f"root ::= {root_rule}"] + [f"{name} ::= {body}" for name, body in self.rules.items()]
        used = " ".join([root_rule, *self.rules.values()])
        lines += [f"{name} ::= {body}" for name, body in _SEPARATORS.items() if name in used]
        return "\n".join(lines) + "\n"


def _needs(name: str) -> list[str]:
    """A basic rule and the basic rules it uses."""
    uses = {"json_string": ["json_char"], "json_number": ["json_integer"],
            "json_value": ["json_object", "json_array", "json_string", "json_number", "json_boolean",
                           "json_null"],
            "json_object": ["json_string", "json_value"], "json_array": ["json_value"]}
    seen, todo = [], [name]
    while todo:
        rule = todo.pop()
        if rule not in seen:
            seen.append(rule)
            todo.extend(uses.get(rule, []))
    return seen


def _repeat(item: str, low: int, high: int | None) -> str:
    """`item` repeated low..high times (high None: no limit) in xgrammar's EBNF."""
    if high is None:
        return f"{item}*" if low == 0 else f"{item}+" if low == 1 else f"{item}{{{low},}}"
    return f"{item}{{{low},{high}}}"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def schema_grammar(schema: dict[str, Any]) -> str:
    """EBNF (xgrammar dialect) for the compact JSON texts that `schema` accepts.

    Raises ValueError for a schema `needs_xgrammar` flags or one the server's checker would refuse.
    """
    if needs_xgrammar(schema):
        raise ValueError("this schema needs xgrammar's JSON-schema compiler")
    builder = _Builder(schema)
    return builder.text(builder.rule_for(schema))


def tool_call_grammar(tools: ToolCallGrammar) -> str:
    """EBNF for `name\\n{arguments}`, one alternative per function (all must be EBNF-expressible)."""
    builder = _Builder({})
    options = []
    for name, parameters in tools.tools:
        builder.root = parameters
        builder._refs = {}  # each function's $refs point into its own parameters
        options.append(f"{literal(name + chr(10))} {builder.rule_for(parameters)}")
    return builder.text(" | ".join(options))


def _element(schema: dict[str, Any]):
    """A structural-tag element for `schema`: the compact EBNF where it can express the schema."""
    import openvino_genai

    config = openvino_genai.StructuredOutputConfig
    if needs_xgrammar(schema):
        return config.JSONSchema(json.dumps(schema))
    return config.EBNF(schema_grammar(schema))


def output_config(constraint: str | ToolCallGrammar):
    """openvino_genai.StructuredOutputConfig for a JSON schema (text) or a `ToolCallGrammar`."""
    import openvino_genai

    config = openvino_genai.StructuredOutputConfig
    if isinstance(constraint, ToolCallGrammar):
        if not any(needs_xgrammar(parameters) for _, parameters in constraint.tools):
            return config(grammar=tool_call_grammar(constraint))
        calls = [config.Concat(config.ConstString(name + "\n"), _element(parameters))
                 for name, parameters in constraint.tools]
        return config(compound_grammar=calls[0] if len(calls) == 1 else config.Union(*calls))
    schema = json.loads(constraint)
    if needs_xgrammar(schema):
        return config(json_schema=constraint)
    return config(grammar=schema_grammar(schema))
