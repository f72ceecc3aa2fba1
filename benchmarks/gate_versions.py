"""Two versions of signflow-zoo side by side for the gate: the working tree (head) and a base commit.

The base is a commit of this repository, by default the one named in ``benchmarks/GATE_BASE`` (the last
commit that landed), else ``--gate-base REV`` or ``$SIGNFLOW_ZOO_GATE_BASE``. Its ``signflow_zoo`` package
and ``plugins/`` are exported with ``git archive`` into a temporary folder; a worker process runs one
version by putting that version's folders first on ``PYTHONPATH`` (and starting outside the repository, so
the working tree on the current directory cannot shadow the base). Both versions share this environment's
installed packages (torch, ONNX Runtime, OpenVINO...): the gate measures a change of this project's code.

:class:`VersionWorker` answers the same requests as the harness's backend worker, so the harness's own
interleaved schedule (``signflow_zoo.bench.schedule.run_schedule``) times head and base blocks in turn.
"""

from __future__ import annotations

import io
import os
import pickle
import select
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASE_FILE = HERE / "GATE_BASE"
BASE_ENV = "SIGNFLOW_ZOO_GATE_BASE"
WORKER = HERE / "gate_worker.py"
START_GRACE = 120.0  # seconds a fresh worker may take to import torch, ONNX Runtime and the plugins


class GateSetupError(RuntimeError):
    """The base version cannot be set up (no git, unknown commit): said, never skipped silently."""


@dataclass(frozen=True)
class Version:
    label: str  # "head" or "base"
    rev: str  # the commit, or "working tree"
    root: Path  # holds signflow_zoo/ and plugins/

    def pythonpath(self) -> str:
        plugin_dirs = sorted(p for p in (self.root / "plugins").glob("*") if p.is_dir())
        return os.pathsep.join([str(self.root), *map(str, plugin_dirs)])


def base_rev(option: str | None = None) -> str:
    """The base commit: ``--gate-base``, else ``$SIGNFLOW_ZOO_GATE_BASE``, else ``benchmarks/GATE_BASE``."""
    if option:
        return option
    if os.environ.get(BASE_ENV):
        return os.environ[BASE_ENV]
    for line in BASE_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            return line
    raise GateSetupError(f"{BASE_FILE} names no commit")


def _git(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise GateSetupError(f"git is needed to set up the gate's base version: {exc}") from None


def head() -> Version:
    return Version("head", "working tree", REPO)


def materialize_base(rev: str, into: Path) -> Version:
    """Export ``rev``'s package and plugins into ``into``; a clear error when the commit is not here."""
    full = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if full.returncode != 0:
        raise GateSetupError(
            f"the gate's base commit {rev!r} is not in this repository (a shallow clone?). Fetch it "
            f"(git fetch --unshallow), or name another with --gate-base REV; {BASE_FILE.name} names the last landed commit")
    sha = full.stdout.decode().strip()
    paths = [p for p in ("signflow_zoo", "plugins") if _git("cat-file", "-e", f"{sha}:{p}").returncode == 0]
    archive = _git("archive", "--format=tar", sha, *paths)
    if archive.returncode != 0:
        raise GateSetupError(f"git archive {sha[:12]} failed: {archive.stderr.decode().strip()}")
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return Version("base", sha[:12], into)


def _backend_error():
    from signflow_zoo.common.errors import BackendError

    return BackendError


class VersionWorker:
    """One ``gate_worker.py`` process running ``version``'s code; ``call`` as ``BackendWorker.call``."""

    def __init__(self, name: str, version: Version, timeout: float = 300.0, env: dict[str, str] | None = None):
        self.name, self.version, self.timeout = name, version, timeout
        full_env = dict(os.environ if env is None else env)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [version.pythonpath(), str(HERE)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=full_env, cwd=str(version.root))
        self._started = False
        self.failed: Exception | None = None

    def call(self, cmd: str, *args, budget: float = 0.0):
        error = _backend_error()
        if self.failed is not None:
            raise self.failed
        wait = budget + self.timeout + (0.0 if self._started else START_GRACE)
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None  # both pipes (Popen in __init__)
        try:
            pickle.dump((cmd, args), stdin)
            stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        ready, _, _ = select.select([stdout], [], [], wait)
        if not ready:
            self.kill()
            self.failed = error(f"{self.name}: no answer to {cmd!r} within {wait:.0f} s; the worker was stopped")
            raise self.failed
        try:
            reply = pickle.load(stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            self.proc.wait(5)
            self.failed = error(f"{self.name}: worker died during {cmd!r} (exit code {self.proc.returncode})")
            raise self.failed from None
        self._started = True
        if reply[0] == "ok":
            return reply[1]
        raise error(f"{self.name}: {cmd}: {reply[1]}: {reply[2]}\n{reply[3]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)

    def close(self) -> None:
        if self.failed is None and self.proc.poll() is None:
            try:
                self.call("close")
            except Exception:  # noqa: BLE001 - closing: the process is killed below anyway
                pass
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                assert f is not None  # both pipes (Popen in __init__)
                f.close()
            except OSError:
                pass
