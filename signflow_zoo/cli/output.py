"""Keep plugin code off a command's own output, and plugin threads from keeping the process alive.

A command whose stdout a program reads (``predict --format json``, ``backends --json``, ``stream``) runs plugin
code: a backend that prints (progress, a banner, a debug line) would corrupt that output. Inside
:func:`command_output` the command writes its output to the stream it yields (the real stdout), while
``sys.stdout`` and file descriptor 1 point to stderr, so whatever else prints, Python or native code and
child processes alike, lands on stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

EXIT_GRACE = 2.0  # seconds the interpreter may spend joining threads left running before we exit anyway


@contextlib.contextmanager
def command_output() -> Iterator[TextIO]:
    """Yield the stream for the command's own output; meanwhile stdout (``sys.stdout`` and fd 1) is stderr."""
    real = sys.stdout
    try:
        fd = real.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor (tests, embedders)
        fd = None
    if fd != 1:  # not the process's stdout: only the Python-level stream can be kept apart
        sys.stdout = sys.stderr
        try:
            yield real
        finally:
            sys.stdout = real
        return
    real.flush()
    saved = os.dup(1)
    out = os.fdopen(saved, "w", buffering=1 if getattr(real, "line_buffering", False) else -1,
                    encoding=getattr(real, "encoding", None), errors=getattr(real, "errors", None), closefd=False)
    sys.stderr.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield out
        out.flush()  # a reader that went away (BrokenPipeError) surfaces here, for main() to handle
    finally:
        sys.stdout = real
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 1)
        try:
            out.close()
        except OSError:  # already reported by the flush above, or the command's own exception is on its way
            pass
        os.close(saved)


def exit_despite_threads(code: int, grace: float = EXIT_GRACE) -> None:
    """When threads that are not daemons are still running (a plugin's), make sure the process still ends.

    The interpreter waits for such threads at exit; a watchdog (itself a daemon) lets it try for ``grace``
    seconds, then says which threads were left and ends the process with ``code``. Call it only where the
    process is about to exit (the console script), never in a process that goes on.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    left = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not left:
        return

    def watchdog() -> None:
        time.sleep(grace)
        names = ", ".join(repr(t.name) for t in left if t.is_alive()) or "?"
        try:
            sys.stderr.write(f"note: thread(s) {names} still running (a plugin's?); exiting anyway\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os._exit(code)

    threading.Thread(target=watchdog, name="signflow-zoo exit watchdog", daemon=True).start()
