"""Run plugin code in a child Python process, so that a crash or a hang becomes an answer, not our end.

``call_in_child("package.module:function", payload, timeout=60)`` starts ``sys.executable``, which imports the
module and calls ``function(payload, channel)``; what it returns comes back (pickled, over a private socket:
the child's stdout is never read, so plugin code printing there cannot corrupt an answer). Meanwhile the
child may call ``channel.event(obj)`` to say where it is (each event restarts the timeout and is handed to
``on_event``) and ``channel.call(name, *args)`` to ask the parent for data (``services[name](*args)``).

- the function returns: its value;
- it raises: :class:`ChildRaised` with the exception's type names and message;
- the process dies (a signal, ``os._exit``) or says nothing for ``timeout`` seconds (it is then killed, with
  the processes it started): :class:`ChildFailed`, ``status`` ``"crashed"`` or ``"timeout"``, saying how it
  ended and carrying the last event, which tells the caller what was running.

The child gets the parent's environment and ``sys.path``, runs in its own session (Ctrl-C reaches the parent,
which stops it) and ends with ``os._exit`` once it has answered, so threads it left behind do not keep it.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signflow_zoo.common.errors import SignFlowError

if TYPE_CHECKING:  # imported where used: a command that needs no child pays nothing for them
    import subprocess
    from multiprocessing.connection import Connection

_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the signflow_zoo package
_BOOT = ("import sys; sys.path.insert(0, {root!r}); from signflow_zoo.common.child import _child_main; "
         "_child_main(int(sys.argv[1]))")


class ChildFailed(Exception):
    """The child died or stopped answering. ``status``: ``crashed`` | ``timeout``; ``how``: e.g. ``SIGABRT``,
    ``exit code 3``, ``after 60 s``; ``last``: its last event (None before the first); ``stderr``: the last
    line it wrote there (when captured)."""

    def __init__(self, status: str, how: str, last: Any = None, stderr: str = ""):
        self.status, self.how, self.last, self.stderr = status, how, last, stderr
        super().__init__(f"{status} ({how})")


class ChildRaised(Exception):
    """The function raised in the child. ``types``: the names of its exception's classes (its MRO)."""

    def __init__(self, types: list[str], message: str):
        self.types, self.message = types, message
        super().__init__(f"{types[0]}: {message}" if message else types[0])


def seconds_from_env(var: str, default: float) -> float:
    """A timeout in seconds from the environment variable ``var`` (> 0), else ``default``."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise SignFlowError(f"{var} must be a number of seconds > 0, got {raw!r}")
    return value


def exit_description(code: int | None) -> str:
    """``SIGABRT`` for a process killed by a signal, ``exit code 3`` for one that exited."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def call_in_child(target: str, payload: Any, *, timeout: float, on_event: Callable[[Any], None] | None = None,
                  services: dict[str, Callable[..., Any]] | None = None, stdout: str = "devnull",
                  capture_stderr: bool = False) -> Any:
    """Call ``target`` (``"module:function"``) in a fresh child process; see the module docstring.

    ``stdout``: where the child's fd 1 goes, ``"devnull"`` or ``"stderr"`` (ours). ``capture_stderr``: keep the
    child's stderr from the terminal (its last line is then reported with a failure).
    """
    import socket
    import subprocess
    import tempfile
    from multiprocessing.connection import Connection

    services = services or {}
    ours, theirs = socket.socketpair()
    err = tempfile.TemporaryFile() if capture_stderr else None  # noqa: SIM115 - closed in the finally below
    try:
        proc = subprocess.Popen([sys.executable, "-c", _BOOT.format(root=_ROOT), str(theirs.fileno())],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if stdout == "devnull" else 2,
                                stderr=err, pass_fds=(theirs.fileno(),), start_new_session=True)
    except BaseException:
        ours.close()
        if err is not None:
            err.close()
        raise
    finally:
        theirs.close()
    conn = Connection(ours.detach())
    last: Any = None
    try:
        try:
            conn.send((target, payload, list(sys.path)))
        except OSError:
            pass  # it died before reading: the receive below reports how
        while True:
            try:
                ready = conn.poll(timeout)
            except OSError:
                ready = True
            if not ready:
                _kill(proc)
                raise ChildFailed("timeout", f"after {timeout:g} s", last, _tail(err))
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                try:
                    code = proc.wait(10)
                except subprocess.TimeoutExpired:
                    _kill(proc)
                    code = proc.returncode
                raise ChildFailed("crashed", exit_description(code), last, _tail(err)) from None
            if msg[0] == "event":
                last = msg[1]
                if on_event is not None:
                    on_event(msg[1])
            elif msg[0] == "call":
                try:
                    reply = ("value", services[msg[1]](*msg[2]))
                except Exception as exc:  # noqa: BLE001 - the child gets it as an error of its call
                    reply = ("error", f"{type(exc).__name__}: {exc}")
                conn.send(reply)
            elif msg[0] == "result":
                return msg[1]
            else:  # ("raise", type names, message)
                raise ChildRaised(msg[1], msg[2])
    finally:
        conn.close()
        try:
            proc.wait(5)  # it ends with os._exit right after answering
        except subprocess.TimeoutExpired:
            pass
        _kill(proc)
        if err is not None:
            err.close()


def _kill(proc: subprocess.Popen) -> None:
    """Stop the child and what it started (its own session), then reap it."""
    import subprocess
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def _tail(err) -> str:
    if err is None:
        return ""
    try:
        err.seek(0, os.SEEK_END)
        size = err.tell()
        err.seek(max(0, size - 4096))
        lines = [line.strip() for line in err.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


# -- the child's side -----------------------------------------------------------------------------
class Channel:
    """What the function in the child gets besides its payload."""

    def __init__(self, conn: Connection):
        self._conn = conn

    def event(self, obj: Any) -> None:
        """Tell the parent where we are (restarts its timeout)."""
        self._conn.send(("event", obj))

    def call(self, name: str, *args: Any) -> Any:
        """Ask the parent for ``services[name](*args)``."""
        self._conn.send(("call", name, args))
        kind, value = self._conn.recv()
        if kind == "error":
            raise RuntimeError(f"the parent process could not answer {name}(): {value}")
        return value


def _child_main(fd: int) -> None:
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    try:
        target, payload, path = conn.recv()
        sys.path[:] = path
        module, _, name = target.partition(":")
        try:
            result = getattr(importlib.import_module(module), name)(payload, Channel(conn))
        except BaseException as exc:  # noqa: BLE001 - SystemExit included: an answer, not an exit
            conn.send(("raise", [c.__name__ for c in type(exc).__mro__], str(exc)))
        else:
            try:
                conn.send(("result", result))
            except Exception as exc:  # noqa: BLE001 - e.g. an object that cannot be pickled
                conn.send(("raise", ["TypeError"], f"its result cannot be sent back: {type(exc).__name__}: {exc}"))
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - a closed stream: nothing to flush
                pass
        os._exit(0)  # threads a plugin left running must not keep this process


ISOLATION_ENV_VAR = "SIGNFLOW_ZOO_PLUGIN_ISOLATION"


def isolation_enabled() -> bool:
    """False when ``SIGNFLOW_ZOO_PLUGIN_ISOLATION`` is 0/false/off/no: third-party plugins are then neither probed
    nor given child processes for their artifact builds."""
    return os.environ.get(ISOLATION_ENV_VAR, "").strip().lower() not in ("0", "false", "off", "no")
