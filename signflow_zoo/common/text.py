"""Text from other machines and plugins made safe to show: control characters and matplotlib mathtext.

Every layer that shows such text (the CLI's error line, the report's tables, the confusion and Pareto
plots) uses these two functions; :mod:`signflow_zoo.report.escape` builds the per-format escaping of tables
on them.
"""

from __future__ import annotations

import re
from typing import Any

# C0 and C1 controls (ESC, CSI, BEL, backspace, carriage return...) and DEL; the bidirectional overrides and
# isolates, which reorder what a terminal or an editor shows ("Trojan Source")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

def printable(text: str, keep: str = "") -> str:
    """``text`` with every control character (but those in ``keep``) shown as an escape: ``\\x1b``, ``\\u202e``."""
    def show(m: re.Match) -> str:
        ch = m.group()
        if ch in keep:
            return ch
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    return _CONTROL.sub(show, text)


def plot_text(text: Any) -> str:
    """Text from results as matplotlib shows it: ``$`` escaped (no mathtext, which fails on ``$\\x$``), control
    characters shown as ``\\x1b``. Line breaks stay."""
    return printable(str(text), keep="\n").replace("$", r"\$")
