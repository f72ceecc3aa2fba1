"""Escaping of text that comes from results (host names, failure reasons, plugin texts) per output format.

Result files and MLflow runs are data from other machines and plugins: a host name or a reason may hold a
spreadsheet formula, a markdown pipe, HTML, a terminal escape sequence or matplotlib mathtext. Tables and
plots pass every such string through one of these functions, so that it is shown, never interpreted:

* :func:`cell` -- a table cell in ``terminal``, ``markdown``, ``csv`` or ``json`` output;
* :func:`line` -- a line of text around a table (titles, notes, legends);
* :func:`plot_text` -- a label, title, annotation or legend entry of a matplotlib figure;
* :func:`printable` -- control characters shown as ``\\x1b`` (the terminal never receives them).
"""

from __future__ import annotations

import re
from typing import Any

from signflow_zoo.common.text import plot_text, printable

__all__ = ["cell", "line", "plot_text", "printable"]

_WHITESPACE = re.compile("[\t\n\r\x0b\x0c\x1c-\x1f\x85\u2028\u2029]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula (OWASP: CSV injection)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")  # what CommonMark reads as raw HTML or an autolink


def _one_line(text: str) -> str:
    return printable(_WHITESPACE.sub(" ", text))


def _markdown(text: str) -> str:
    """One line of markdown that shows ``text``: no raw HTML, no link or image, no table column."""
    text = _HTML_START.sub("&lt;", _one_line(text))
    return text.replace("|", "\\|").replace("](", "]\\(")


def cell(value: Any, fmt: str) -> Any:
    """A table cell as ``fmt`` shows it; only strings change (numbers stay numbers).

    terminal: one line, control characters shown as ``\\x1b``. markdown: that, and ``|`` escaped (``\\|``),
    HTML tags and links neutralized (``&lt;script>``, ``]\\(``). csv: a string starting with ``= + - @``, tab or
    carriage return (a formula to a spreadsheet) gets a leading ``'`` unless it is a plain number; control
    characters (but tab and line breaks, which csv quotes) shown as ``\\x1b``. json: unchanged (the encoder
    escapes control characters).
    """
    if not isinstance(value, str) or fmt == "json":
        return value
    if fmt == "csv":
        if value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
            value = "'" + value
        return printable(value, keep="\t\n\r")
    if fmt == "markdown":
        return _markdown(value)
    return _one_line(value)


def line(text: str, fmt: str) -> str:
    """A line of text around a table (a title, a note) as ``fmt`` shows it: one line, control characters shown,
    in markdown no raw HTML, link or column."""
    return _markdown(text) if fmt == "markdown" else _one_line(text)
