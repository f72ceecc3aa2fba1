"""argparse ``type=`` converters shared by every command: a bad number is a usage error (exit 2).

Every converter has explicit bounds (:mod:`signflow_zoo.common.limits` holds the ranges), so a typo such as
``--batch-sizes 100000`` or ``--lr nan`` stops at parsing, with one line naming the range, before any work.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, cast

from signflow_zoo.common.limits import Range


def _parse(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (ValueError, OverflowError):  # int() of 5000 digits is a ValueError too
        raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}")
    return value


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def in_range(r: Range) -> Callable[[str], int | float]:
    """The converter for one :class:`~signflow_zoo.common.limits.Range`."""
    def convert(text: str):
        value = _parse(text, r.kind, r.what)
        if value not in r:
            raise argparse.ArgumentTypeError(f"expected {r.what}, got {_shown(text)}")
        return value

    convert.__name__ = r.what  # argparse names the type in some messages
    return convert


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """Integers from ``lo`` to ``hi``, both included."""
    return cast("Callable[[str], int]", in_range(Range(int, lo, hi)))


def float_in(lo: float, hi: float, lo_open: bool = False) -> Callable[[str], float]:
    """Finite numbers from ``lo`` (excluded with ``lo_open``) to ``hi``."""
    return in_range(Range(float, lo, hi, lo_open))


def int_list_in(r: Range, max_count: int) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated integers, each in ``r``, at most ``max_count`` of them (duplicates dropped, order kept)."""
    what = f"comma-separated integers, each in {r.text}, at most {max_count} of them"

    def convert(text: str) -> tuple[int, ...]:
        parts = [t.strip() for t in text.split(",") if t.strip()]
        if not parts or len(parts) > max_count:
            raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}")
        values = tuple(_parse(t, int, what) for t in parts)
        if any(v not in r for v in values):
            raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}")
        return tuple(dict.fromkeys(values))

    convert.__name__ = what
    return convert
