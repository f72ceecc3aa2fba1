"""Checking an output path before the work that fills it: a typo must not cost a finished bench or training.

Nothing is created by the check: the file's folder may not exist yet (it is made when the file is
written), but then the nearest folder that does exist must be writable.
"""

from __future__ import annotations

import os
from pathlib import Path

from signflow_zoo.common.errors import SignFlowError


class OutputPathError(SignFlowError):
    """An output file cannot be written where the user asked for it."""


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a Path when a file can be written there; :class:`OutputPathError` naming ``option`` otherwise."""
    text = os.fspath(path)
    if not str(text).strip():
        raise OutputPathError(f"{option}: empty path; give a file name such as results.json")
    if "\0" in str(text):
        raise OutputPathError(f"{option}: the path contains a NUL character")
    p = Path(text).expanduser()
    try:
        if p.is_dir():
            raise OutputPathError(f"{option} {p}: is a directory; give a file path inside it, "
                                  f"e.g. {p / ('result' + (p.suffix or '.json'))}")
        if p.exists():
            if not os.access(p, os.W_OK):
                raise OutputPathError(f"{option} {p}: the file exists and is not writable")
            return p
        folder = p.parent if str(p.parent) else Path(".")
        while not folder.exists():
            if folder.parent == folder:
                break
            folder = folder.parent
        if not folder.is_dir():
            raise OutputPathError(f"{option} {p}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputPathError(f"{option} {p}: cannot write into {folder} (permission denied); choose "
                                  "another place")
    except OSError as exc:  # e.g. a name too long for the file system
        raise OutputPathError(f"{option} {p}: not a usable path ({exc.strerror or exc})") from None
    return p
