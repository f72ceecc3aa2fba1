"""Files that several processes share: unique temporary names, atomic writes, and exclusive locks.

Benches on one machine (or on one shared ``$SIGNFLOW_ZOO_HOME``) race to create the same cache files.
Every writer goes through a temporary file whose name is unique per process and per call, flushed to disk
(``fsync``), then an atomic rename, so a reader never sees half a file, two writers never write into one
temp file, and a power cut leaves the old file or the new one, never an empty one.
Expensive work that only one process should do (training a checkpoint, exporting an ONNX graph) is
done under :func:`exclusive`: a ``fcntl.flock`` on a ``.lock`` file next to the target. The second
process waits, then finds the target made and reuses it. The kernel drops the lock when its holder
dies, so a crashed process never leaves a stale lock behind.

The holder writes who it is into the ``.lock`` file (pid, host, command, what it does, since when): for
information only, the lock itself is the ``flock``. A waiter waits at most a bound (per use, see
:data:`LOCK_TIMEOUTS`; ``SIGNFLOW_ZOO_LOCK_TIMEOUT`` seconds overrides them all), says once after
:data:`NOTICE_AFTER` seconds who it waits for, and fails at once (:class:`LockTimeout`) when the holder
is a stopped process on this host (a bench suspended with Ctrl-Z would otherwise be waited for forever).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import socket
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from signflow_zoo.common.errors import LockTimeout, SignFlowError

LOCK_TIMEOUT_ENV = "SIGNFLOW_ZOO_LOCK_TIMEOUT"  # seconds, for every lock ("inf": wait as long as it takes)
# How long a process waits for a lock another process holds, per use, in seconds.
LOCK_TIMEOUTS = {
    "store": 60.0,  # the local SQLite MLflow store: held for one store call (a fresh database's migration included)
    "artifact": 3600.0,  # an ONNX export and optimization of one checkpoint
    "training": 6 * 3600.0,  # a checkpoint another process is training: that may legitimately take long
    "default": 3600.0,
}
NOTICE_AFTER = 3.0  # seconds of waiting after which the waiter says who holds the lock
STOPPED_GRACE = 1.0  # seconds a holder may stay stopped (e.g. a debugger's pause) before the waiter gives up


def temp_path(path: str | Path, suffix: str = ".tmp") -> Path:
    """A hidden sibling of ``path``, unique per process and call (keep the real suffix where a writer
    chooses its format by it, e.g. ``suffix=".tmp.npz"``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; best effort (not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` through a unique temp file, flushed to disk, and a rename: readers see the old file or
    the new one, also after a crash or a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(target.name + ".lock")


# -- who holds a lock -----------------------------------------------------------------------------

def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None (gone, or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text.rpartition(")")[2].split()


def _proc_start(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` on this host (``R``, ``S``, ``T`` stopped, ...) or None when unknown."""
    fields = _proc_stat(pid)
    return fields[0] if fields else None


def _command() -> str:
    """The program and its subcommand (``signflow-zoo bench``), never its other arguments (they may hold secrets)."""
    argv = [a for a in sys.argv if a]
    if not argv or argv[0] == "-c":
        return "python -c"
    words = [os.path.basename(argv[0])] + [a for a in argv[1:] if not a.startswith("-")][:1]
    return " ".join(words)[:80]


def _identity(what: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(), "what": what,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "proc_start": _proc_start(os.getpid())}


def lock_holder(target: str | Path) -> dict[str, Any]:
    """What the holder of ``target``'s lock wrote about itself (pid, host, command, what, since); ``{}`` when
    nothing readable is there. Information only: whether the lock is held is :func:`is_locked`'s question."""
    try:
        with open(lock_path(target), "rb") as f:
            raw = f.read(4096)
        info = json.loads(raw.decode())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else {}


def _holder_now(lp: Path) -> tuple[dict[str, Any], bool]:
    """``(holder info, stopped)`` for a lock found held. Info left by a process of this host that is gone
    (or whose pid now belongs to another process) is stale: the real holder has not written yet."""
    info = lock_holder(lp.with_name(lp.name[: -len(".lock")]))
    if not info or info.get("host") != socket.gethostname():
        return info, False
    pid = info["pid"]
    fields = _proc_stat(pid)
    if fields is None:
        return ({} if Path("/proc/self/stat").exists() else info), False
    if info.get("proc_start") is not None and len(fields) > 19 and fields[19] != info["proc_start"]:
        return {}, False
    return info, fields[0] in ("T", "t")


def describe_holder(info: dict[str, Any]) -> str:
    """``pid 4242 (signflow-zoo bench: training checkpoint x.pt) on this host since ...``, or a phrase
    saying the holder is unknown."""
    if not info:
        return "another process (it has not said which; `fuser -v <lock file>` shows it)"
    what = ": ".join(str(x) for x in (info.get("command"), info.get("what")) if x)
    host = info.get("host")
    where = "this host" if host == socket.gethostname() else f"host {host}"
    since = f" since {info['since']}" if info.get("since") else ""
    return f"pid {info['pid']}{f' ({what})' if what else ''} on {where}{since}"


def lock_timeout(use: str = "default") -> float:
    """Seconds to wait for a lock used for ``use`` (a key of :data:`LOCK_TIMEOUTS`); ``SIGNFLOW_ZOO_LOCK_TIMEOUT``
    overrides every use (``inf``: no bound). ``math.inf`` means wait as long as it takes."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return LOCK_TIMEOUTS.get(use, LOCK_TIMEOUTS["default"])
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # negative or NaN
        raise SignFlowError(f"{LOCK_TIMEOUT_ENV}={raw!r}: give the seconds to wait for a lock (a number >= 0, "
                            "or inf for no bound)")
    return value


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait(fd: int, lp: Path, limit: float, log: Callable[[str], None]) -> None:
    """Poll for the lock until held; :class:`LockTimeout` after ``limit`` seconds, or once the holder has
    stayed stopped for :data:`STOPPED_GRACE` seconds."""
    start = time.monotonic()
    delay = 0.02
    noticed = stopped_told = False
    stopped_since: float | None = None
    while True:
        if _try_lock(fd):
            return
        now = time.monotonic()
        info, stopped = _holder_now(lp)
        holder = describe_holder(info)
        if stopped:
            pid = info["pid"]
            message = (f"{lp} is held by pid {pid} ({info.get('command') or 'unknown command'}), which is stopped "
                       f"(Ctrl-Z): resume it with `fg` in its terminal (or `kill -CONT {pid}`), or end it "
                       f"(`kill {pid}; kill -CONT {pid}`)")
            if not stopped_told:
                log(message)
                stopped_told = noticed = True
            stopped_since = stopped_since if stopped_since is not None else now
            if now - stopped_since >= min(STOPPED_GRACE, limit):
                raise LockTimeout(message, lock=str(lp), holder=info, stopped=True)
        else:
            stopped_since = None
        waited = now - start
        if waited >= limit:
            raise LockTimeout(
                f"{lp}: gave up after {waited:.1f} s waiting for this lock, held by {holder}; let it finish or end "
                f"it, or set {LOCK_TIMEOUT_ENV} (seconds) to wait longer", lock=str(lp), holder=info)
        if not noticed and waited >= NOTICE_AFTER:
            bound = "" if math.isinf(limit) else f" (for at most {limit - waited:.0f} s more)"
            log(f"waiting for {lp}: held by {holder}{bound}")
            noticed = True
        time.sleep(max(min(delay, limit - waited), 0.001))
        delay = min(delay * 1.5, 0.25)


@contextlib.contextmanager
def exclusive(target: str | Path, blocking: bool = True, *, timeout: float | None = None, use: str = "default",
              what: str = "", log: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold the lock of ``target`` (``<target>.lock``) for the ``with`` block.

    Yields True when held. With ``blocking=False`` it yields False at once when another process holds
    it (the caller then skips the target, e.g. a result file whose bench is still running). A blocking
    wait lasts at most ``timeout`` seconds (default: :func:`lock_timeout` of ``use``), says once through
    ``log`` (default: a ``RuntimeWarning``) who holds the lock when it lasts more than :data:`NOTICE_AFTER`
    seconds, and raises :class:`LockTimeout` naming the lock file and its holder when it runs out, or when
    the holder is a stopped (Ctrl-Z) process on this host. While held, the lock file says who holds it
    (``what``: what the holder does with it), see :func:`lock_holder`.
    """
    lp = lock_path(target)
    lp.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            if not blocking:
                yield False
                return
            _wait(fd, lp, lock_timeout(use) if timeout is None else timeout, log or _warn)
        with contextlib.suppress(OSError):  # information only: a lock file we cannot write still locks
            data = json.dumps(_identity(what)).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # nobody holds it: nobody to name
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_locked(target: str | Path) -> bool:
    """True when another process holds the lock of ``target`` right now (never waits, never writes)."""
    lp = lock_path(target)
    try:
        fd = os.open(lp, os.O_RDONLY)
    except OSError:
        return False
    try:
        if not _try_lock(fd):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class HeldLock:
    """A lock held across calls (acquire now, release later), e.g. for the whole life of a bench."""

    def __init__(self, target: str | Path, **kwargs: Any):
        self._cm: contextlib.AbstractContextManager[bool] | None = exclusive(target, **kwargs)
        self._cm.__enter__()

    def release(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None


HOME_ENV_VAR = "SIGNFLOW_ZOO_HOME"


def zoo_home() -> Path:
    return Path(os.environ.get(HOME_ENV_VAR) or ".signflow-zoo")


def stable_hash(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]
