"""Files that several processes share: unique temporary names, atomic writes, and exclusive locks.

Benches on one machine (or on one shared ``$SIGNFLOW_ZOO_HOME``) race to create the same cache files.
Every writer goes through a temporary file whose name is unique per process and per call, then an
atomic rename, so a reader never sees half a file and two writers never write into one temp file.
Expensive work that only one process should do (training a checkpoint, exporting an ONNX graph) is
done under :func:`exclusive`: a ``fcntl.flock`` on a ``.lock`` file next to the target. The second
process waits, then finds the target made and reuses it. The kernel drops the lock when its holder
dies, so a crashed process never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator


def temp_path(path: str | Path, suffix: str = ".tmp") -> Path:
    """A hidden sibling of ``path``, unique per process and call (keep the real suffix where a writer
    chooses its format by it, e.g. ``suffix=".tmp.npz"``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` through a unique temp file and a rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(target.name + ".lock")


@contextlib.contextmanager
def exclusive(target: str | Path, blocking: bool = True) -> Iterator[bool]:
    """Hold the lock of ``target`` (``<target>.lock``) for the ``with`` block.

    Yields True when held. With ``blocking=False`` it yields False at once when another process holds
    it (the caller then skips the target, e.g. a result file whose bench is still running).
    """
    lp = lock_path(target)
    lp.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_locked(target: str | Path) -> bool:
    """True when another process holds the lock of ``target`` right now."""
    if not lock_path(target).exists():
        return False
    with exclusive(target, blocking=False) as held:
        return not held


class HeldLock:
    """A lock held across calls (acquire now, release later), e.g. for the whole life of a bench."""

    def __init__(self, target: str | Path):
        self._cm: contextlib.AbstractContextManager[bool] | None = exclusive(target)
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
