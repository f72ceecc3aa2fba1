"""Parsing documents signflow-zoo did not write itself (JSON, TOML) with a bound on their nesting.

Python's parsers, and every walker that follows them, recurse once per level: a file nested a few
thousand levels deep (hostile or corrupt) ends in a ``RecursionError`` traceback instead of a message.
Every document read from disk or from a model file's metadata goes through :func:`loads_json` or
:func:`loads_toml`, which refuse anything nested deeper than :data:`MAX_DEPTH` levels with a
:class:`DocumentError` naming the document. No real result file, zoo file or model metadata comes close:
the deepest signflow-zoo writes is 6 levels.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

from signflow_zoo.common.errors import SignFlowError

MAX_DEPTH = 64  # levels of nested objects/arrays/tables any document may have


class DocumentError(SignFlowError, ValueError):
    """A document is not valid JSON/TOML, or is nested deeper than :data:`MAX_DEPTH`."""


def text_depth(text: str, opening: str = "[{", closing: str = "]}", quotes: str = '"', comment: str = "") -> int:
    """The deepest bracket nesting in ``text``, brackets inside quoted strings (and after ``comment``) not counted.

    An iterative scan: it never recurses, whatever the input.
    """
    depth = deepest = 0
    quote = ""
    escaped = in_comment = False
    for ch in text:
        if in_comment:
            in_comment = ch != "\n"
        elif quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in quotes:
            quote = ch
        elif comment and ch == comment:
            in_comment = True
        elif ch in opening:
            depth += 1
            deepest = max(deepest, depth)
        elif ch in closing:
            depth = max(depth - 1, 0)
    return deepest


def object_depth(obj: Any) -> int:
    """The nesting depth of parsed data (dicts and lists), walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in item)
    return deepest


def check_depth(obj: Any, what: str, limit: int = MAX_DEPTH) -> Any:
    """``obj`` unchanged when nested at most ``limit`` levels; :class:`DocumentError` naming ``what`` otherwise."""
    depth = object_depth(obj)
    if depth > limit:
        raise DocumentError(f"{what}: nested {depth} levels deep; at most {limit} are accepted (a corrupt or "
                            "hostile file?)")
    return obj


def loads_json(text: str | bytes, what: str, limit: int = MAX_DEPTH) -> Any:
    """``json.loads(text)``, refusing nesting deeper than ``limit`` before parsing; :class:`DocumentError`
    naming ``what`` for invalid JSON too."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"{what}: not UTF-8 text ({exc})") from None
    depth = text_depth(text)
    if depth > limit:
        raise DocumentError(f"{what}: nested {depth} levels deep; at most {limit} are accepted (a corrupt or "
                            "hostile file?)")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DocumentError(f"{what}: not valid JSON ({exc})") from None


def loads_toml(text: str, what: str, limit: int = MAX_DEPTH) -> dict[str, Any]:
    """``tomllib.loads(text)``, refusing nesting deeper than ``limit``; :class:`DocumentError` naming ``what``
    for invalid TOML too (its line and column in the message)."""
    depth = text_depth(text, quotes="\"'", comment="#")
    if depth > limit:
        raise DocumentError(f"{what}: nested {depth} levels deep; at most {limit} are accepted (a corrupt or "
                            "hostile file?)")
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise DocumentError(f"{what}: nested too deeply to parse; at most {limit} levels are accepted") from None
    except tomllib.TOMLDecodeError as exc:
        raise DocumentError(f"{what}: not valid TOML ({exc})") from None
    return check_depth(doc, what, limit)


__all__ = ["MAX_DEPTH", "DocumentError", "check_depth", "loads_json", "loads_toml", "object_depth", "text_depth"]
