"""A small reader for protobuf text format (the syntax of MediaPipe's graph.pbtxt), for checking files.

No protobuf descriptor for OVMS's graph is installable here, so the tests parse the text themselves
and check it against the field names and types the OVMS sources document.
"""

from __future__ import annotations

import re

TOKEN = re.compile(r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|(?P<ext>\[[^\]]*\])"""
                   r"""|(?P<num>-?\d+(?:\.\d+)?)|(?P<ident>[A-Za-z_][A-Za-z0-9_.]*)|(?P<punct>[{}:,;<>])""")
Message = list  # [(field name, value)], value: str | int | float | bool | identifier (enum) | Message


class Ident(str):
    """An unquoted word: a bool or an enum value."""


def tokens(text: str) -> list[tuple[str, object]]:
    out, position = [], 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if not match:
            raise ValueError(f"unexpected text at {position}: {text[position:position + 20]!r}")
        position = match.end()
        kind = match.lastgroup
        if kind is None:
            continue
        raw = match.group(kind)
        if kind == "str":
            out.append(("value", bytes(raw[1:-1], "utf-8").decode("unicode_escape")))
        elif kind == "num":
            out.append(("value", float(raw) if "." in raw else int(raw)))
        elif kind == "ext":
            out.append(("name", "[" + re.sub(r"\s+", "", raw[1:-1]) + "]"))
        else:
            out.append((kind, raw))
    return out


def parse(text: str) -> Message:
    items, index = tokens(text), 0

    def message(closing: str | None) -> Message:
        nonlocal index
        fields: Message = []
        while True:
            if index >= len(items):
                if closing:
                    raise ValueError("unclosed message")
                return fields
            kind, raw = items[index]
            if kind == "punct" and raw == closing:
                index += 1
                return fields
            if kind == "punct" and raw in ",;":
                index += 1
                continue
            if kind not in ("ident", "name"):
                raise ValueError(f"expected a field name, got {raw!r}")
            name = str(raw)
            index += 1
            colon = items[index] == ("punct", ":")
            if colon:
                index += 1
            kind, raw = items[index]
            if kind == "punct" and raw in "{<":
                index += 1
                fields.append((name, message("}" if raw == "{" else ">")))
            elif not colon:
                raise ValueError(f"field {name}: a scalar needs ':'")
            elif kind == "value":
                index += 1
                fields.append((name, raw))
            elif kind == "ident":
                index += 1
                fields.append((name, True if raw == "true" else False if raw == "false" else Ident(raw)))
            else:
                raise ValueError(f"field {name}: unexpected {raw!r}")

    return message(None)


def get(fields: Message, name: str) -> list:
    return [value for key, value in fields if key == name]
