"""Checking an output path before the work that fills it: a typo must not cost a finished bench or training,
and an output must never destroy something that is not the user's output file.

Nothing is created by the check: the file's folder may not exist yet (it is made when the file is
written), but then the nearest folder that does exist must be writable.

What :func:`check_output_file` accepts, and what it refuses (one :class:`OutputPathError` naming the option,
the path and the fix, before any work starts):

* **Regular files only.** The path must not exist yet, or be a regular file. A character or block device
  (``/dev/null``), a FIFO, a socket or anything else that is not a regular file is refused: every writer
  of this package writes a temporary file and renames it over the output, which would replace the device
  node with a plain file (run as root, ``-o /dev/null`` would replace the system's ``/dev/null``).
* **No process or device paths.** A path under ``/dev`` (except ``/dev/shm``), ``/proc`` or ``/sys`` --
  ``/dev/stdout``, ``/dev/fd/1``, ``/proc/self/fd/1`` -- is refused even when it leads to a regular file at
  the moment (stdout redirected to a file): it names a process's open file, which a rename cannot write into.
  So is a symbolic link that leads through such a path.
* **Symbolic links are written through.** When the output itself is a symbolic link, the link is resolved,
  its target is checked like any other output, and the *target's* path is returned: the writer replaces
  the target (atomically, in the target's folder) and the link stays a link, pointing where it pointed. A
  dangling link gets its target created, as a shell's ``>`` would. A link loop is refused. Links in the
  folders above the file need nothing: a rename inside a folder reached through a link replaces no link.
* **Never an input.** ``inputs`` names what the command reads (``(description, path)`` pairs). An output
  that is one of those files -- the same path after resolving links, or the same file by
  :func:`os.path.samefile` (a hard link) -- is refused ("--output ck.pt is the checkpoint being exported;
  choose another output file"). An input that is a folder (a data set, a folder of the zoo home) protects the files
  already in it: an existing file inside it is refused as an output; a new file there is allowed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from signflow_zoo.common.errors import SignFlowError

# paths that name devices, kernel state or a process's open files, never a file an output can replace
SPECIAL_ROOTS = ("/dev", "/proc", "/sys")
SPECIAL_EXCEPTIONS = ("/dev/shm",)  # a tmpfs for ordinary files
MAX_LINK_HOPS = 40  # as the kernel's own limit on symbolic links followed in one lookup


class OutputPathError(SignFlowError):
    """An output file cannot be written where the user asked for it."""


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _special_root(path: str) -> str | None:
    """The special root (``/dev``, ``/proc``, ``/sys``) an absolute, normalized ``path`` lies under, or None."""
    if any(_under(path, ok) for ok in SPECIAL_EXCEPTIONS):
        return None
    return next((root for root in SPECIAL_ROOTS if _under(path, root)), None)


def _hops(p: Path) -> list[str]:
    """``p`` and every path its symbolic links lead to, one link at a time (absolute, normalized, not resolved).

    Stops at the first path that is not a link; a loop (or a chain longer than the kernel follows) ends with
    a path that is still a link, which the caller refuses.
    """
    hops = [os.path.normpath(os.path.abspath(p))]
    for _ in range(MAX_LINK_HOPS):
        current = hops[-1]
        if not os.path.islink(current):
            break
        hops.append(os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current))))
    return hops


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _refuse_inputs(shown: str, target: Path, option: str, inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    for what, given in inputs:
        if given is None or not str(os.fspath(given)).strip():
            continue
        inp = Path(os.fspath(given)).expanduser()
        try:
            is_dir = inp.is_dir()
        except OSError:
            continue
        if not is_dir:
            if _same_file(target, inp):
                raise OutputPathError(f"{option} {shown} is {what}; choose another output file")
            continue
        if not os.path.lexists(target):
            continue  # a new file inside an input folder replaces nothing
        real_target, real_dir = os.path.realpath(target), os.path.realpath(inp)
        if _under(real_target, real_dir):
            raise OutputPathError(f"{option} {shown} is a file inside {what} ({inp}), which this command reads; "
                                  "choose another output file")


def check_output_file(path: str | os.PathLike, option: str,
                      inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()) -> Path:
    """The path to write ``option``'s file to; :class:`OutputPathError` naming ``option`` when none may be written.

    Returns ``path`` itself, or, when ``path`` is a symbolic link, the path of its target (write there, so
    the link survives). ``inputs``: ``(description, path)`` of what the command reads, e.g.
    ``[("the checkpoint being exported", ckpt)]``; see the module's docstring for the rules.
    """
    text = os.fspath(path)
    if not str(text).strip():
        raise OutputPathError(f"{option}: empty path; give a file name such as results.json")
    if "\0" in str(text):
        raise OutputPathError(f"{option}: the path contains a NUL character")
    p = Path(text).expanduser()
    try:
        hops = _hops(p)
        if os.path.islink(hops[-1]):
            raise OutputPathError(f"{option} {p}: a loop of symbolic links (or more than {MAX_LINK_HOPS} in a row); "
                                  "give the path of a regular file")
        if os.path.exists(p) and not stat.S_ISREG(mode := os.stat(p).st_mode) and not stat.S_ISDIR(mode):
            via = f" (a symbolic link to {hops[1]})" if len(hops) > 1 else ""
            raise OutputPathError(f"{option} {p}{via}: is {_kind(mode)}, not a regular file; writing would replace it "
                                  "with a plain file: give the path of a regular file")
        for hop in hops:  # each as written, and with every link in it resolved (a folder may be a link)
            root = _special_root(hop) or _special_root(os.path.realpath(hop))
            if root is not None:
                via = "" if hop == hops[0] else f" (a symbolic link to {hop})"
                raise OutputPathError(f"{option} {p}{via}: names a device or a process's open file (a path under "
                                      f"{root}), not a regular file; give the path of a regular file")
        target = Path(os.path.realpath(p)) if os.path.islink(p) else p
        shown = str(p) if target == p else f"{p} (a symbolic link to {target})"
        if target.is_dir():
            raise OutputPathError(f"{option} {p}: is a directory; give a file path inside it, "
                                  f"e.g. {p / ('result' + (p.suffix or '.json'))}")
        _refuse_inputs(shown, target, option, inputs)
        if os.path.lexists(target) and not os.access(target, os.W_OK):
            raise OutputPathError(f"{option} {shown}: the file exists and is not writable")
        folder = target.parent if str(target.parent) else Path(".")
        while not folder.exists():
            if folder.parent == folder:
                break
            folder = folder.parent
        if not folder.is_dir():
            raise OutputPathError(f"{option} {shown}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputPathError(f"{option} {shown}: cannot write into {folder} (permission denied); choose "
                                  "another place")
    except OSError as exc:  # e.g. a name too long for the file system
        raise OutputPathError(f"{option} {p}: not a usable path ({exc.strerror or exc})") from None
    return target
