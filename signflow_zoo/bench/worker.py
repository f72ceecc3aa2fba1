"""One worker process per backend: where the harness prepares, runs and times each runner.

Why a process each: two runtimes in one process share the allocator, the resident-memory figure and
the cores their thread pools spin on; a backend that segfaults, aborts, hangs or runs out of memory takes
the harness down with it. In its own process a backend is measured as a user would run it, its memory is
its own, and its failure becomes a row (``crashed`` / ``timeout``) while the others complete.

Workers start from a fork server that has already imported numpy, torch and onnxruntime, so a worker is
ready in a fraction of a second; the parent's environment and ``sys.path`` at the time of the request are
handed to each worker (a fork server keeps the environment it started with), so plugins named in
``SIGNFLOW_ZOO_PLUGINS`` and test-local plugin modules load there too. The runner class travels by
reference (module and name): it must be importable, which every registered plugin's class is.

Plugins do not change: the worker drives the ordinary :class:`~signflow_zoo.backends.runner.Runner` contract.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signflow_zoo.common.errors import BackendError

if TYPE_CHECKING:
    from signflow_zoo.backends.runner import Runner

PRELOAD = ["numpy", "torch", "onnxruntime", "signflow_zoo.backends.runner", "signflow_zoo.bench.timing"]
START_GRACE = 120.0  # seconds a fresh worker may take to import and answer, on top of the timeout
# other names runtimes give the precisions of signflow_zoo.backends.parity.TOLERANCES (Runner.effective_precision)
PRECISION_ALIASES = {"float32": "fp32", "f32": "fp32", "float": "fp32", "float16": "fp16", "f16": "fp16",
                     "half": "fp16", "bfloat16": "bf16", "i8": "int8", "u8": "int8", "uint8": "int8"}


class WorkerFailed(BackendError):
    """A worker process died or stopped answering. ``status`` is ``crashed`` or ``timeout``."""

    def __init__(self, status: str, message: str):
        self.status = status
        super().__init__(message)


class WorkerError(BackendError):
    """The runner raised inside its worker; ``kind`` is the exception's type name."""

    def __init__(self, kind: str, message: str, trace: str = ""):
        self.kind, self.trace = kind, trace
        super().__init__(f"{kind}: {message}" if message else kind)


@dataclass
class WorkerSpec:
    runner_cls: type
    options: Any  # RunnerOptions
    artifacts: Any  # Artifacts
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


@lru_cache(maxsize=1)
def _context():
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


def _signal_name(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: often the kernel's out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


class BackendWorker:
    """The harness's handle on one backend's process. Every request has a deadline."""

    def __init__(self, name: str, spec: WorkerSpec, timeout: float):
        self.name = name
        self.timeout = float(timeout)
        self.failed: WorkerFailed | None = None
        ctx = _context()
        self.conn, child = ctx.Pipe()
        try:
            pickle.dumps(spec.runner_cls)
        except Exception as exc:  # noqa: BLE001 - e.g. a class defined inside a function
            raise BackendError(f"backend {name!r}: its Runner class cannot be sent to a worker process ({exc}); "
                               "define it at module level in an importable module") from None
        self.proc = ctx.Process(target=_serve, args=(child, spec), name=f"signflow-zoo {name}", daemon=True)
        self.proc.start()
        child.close()
        self._started = False

    # -- requests -------------------------------------------------------------------------------
    def call(self, cmd: str, *args: Any, budget: float = 0.0) -> Any:
        """Send one request and wait for its answer, at most ``budget + timeout`` seconds."""
        if self.failed is not None:
            raise self.failed
        wait = budget + self.timeout + (0.0 if self._started else START_GRACE)
        try:
            self.conn.send((cmd, args))
            ready = self.conn.poll(wait)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            ready = True  # the answer below reads the EOF and reports how the process ended
        if not ready:
            self.kill()
            self.failed = WorkerFailed(
                "timeout", f"backend {self.name!r} did not answer {cmd!r} within {wait:.0f} s "
                f"(--timeout {self.timeout:g}); the worker was stopped")
            raise self.failed
        try:
            reply = self.conn.recv()
        except (EOFError, OSError, ConnectionResetError):
            self.proc.join(5)
            self.failed = WorkerFailed(
                "crashed", f"backend {self.name!r} worker died during {cmd!r}: {_signal_name(self.proc.exitcode)}")
            raise self.failed from None
        self._started = True
        if reply[0] == "ok":
            return reply[1]
        raise WorkerError(reply[1], reply[2], reply[3])

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)

    def close(self) -> None:
        if self.failed is None and self.proc.is_alive():
            try:
                self.conn.send(("close", ()))
                self.conn.poll(10)
            except (OSError, EOFError):
                pass
            self.proc.join(10)
        self.kill()
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- the worker side ------------------------------------------------------------------------------
def _status_kb(field_name: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _Worker:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.runner: Runner | None = None  # set by prepare(), the first request
        self.batches: dict[Any, tuple[Any, Any]] = {}
        self.baseline_kb = float("nan")
        self.peak_reset = False
        self.device_free0: int | None = None
        self.device_min_free: int | None = None

    # each method answers one request
    def prepare(self) -> dict[str, Any]:
        self.peak_reset = _reset_peak_rss()
        self.baseline_kb = _status_kb("VmRSS")
        runner = self.spec.runner_cls(self.spec.options)
        if getattr(runner, "device_kind", "cpu") == "gpu":
            self._device_sample(first=True)
        runner.prepare(self.spec.artifacts)
        runner.prepared = True
        self.runner = runner
        self._device_sample()
        return runner.describe()

    def effective(self) -> dict[str, str]:
        """``runner.effective_precision()`` (what really runs), as plain strings with the precision's usual name
        (``float32``/``f32`` -> ``fp32``, ...). A method that raises or returns something else is answered with
        empty precision and device and why in ``how``: it never fails the backend."""
        assert self.runner is not None
        try:
            got = self.runner.effective_precision()
        except Exception as exc:  # noqa: BLE001 - a plugin's read-back is data, not a reason to fail its backend
            return {"precision": "", "device": "", "how": f"effective_precision() raised {type(exc).__name__}: "
                                                          f"{str(exc).strip()[:300]}"}
        if not isinstance(got, dict):
            return {"precision": "", "device": "", "how": f"effective_precision() returned a {type(got).__name__}, "
                                                          "not a dict"}
        precision = " ".join(str(got.get("precision") or "").split()).lower()
        return {"precision": PRECISION_ALIASES.get(precision, precision),
                "device": " ".join(str(got.get("device") or "").split()).lower(),
                "how": " ".join(str(got.get("how") or "").split())[:500]}

    def run(self, features, mask):
        assert self.runner is not None
        return self.runner.run(features, mask)

    def run_many(self, pairs):
        assert self.runner is not None
        out = [self.runner.run(x, m) for x, m in pairs]
        self.runner.synchronize()
        self._device_sample()
        return out

    def load(self, key, features, mask) -> None:
        self.batches[key] = (features, mask)

    def _call(self, key):
        x, m = self.batches[key]
        assert self.runner is not None
        run = self.runner.run
        sync = self.runner.synchronize if getattr(self.runner, "asynchronous", False) else None
        return (lambda: run(x, m)), sync

    def warmup(self, key, max_calls: int, max_seconds: float) -> list[int]:
        from signflow_zoo.bench.timing import warm_up

        fn, sync = self._call(key)
        return warm_up(fn, sync, max_calls, max_seconds)

    def time(self, key, min_calls: int, min_seconds: float, discard: int):
        from signflow_zoo.bench.timing import time_block

        fn, sync = self._call(key)
        out = time_block(fn, sync, min_calls, min_seconds, discard)
        self._device_sample()
        return out

    def unload(self, key) -> None:
        self.batches.pop(key, None)

    def stream(self, labels, clips, config=None):
        from signflow_zoo.serve.replay import measure_stream_latency

        assert self.runner is not None
        return measure_stream_latency(self.runner, labels, clips, config)

    def capacity(self, labels, clips, config: dict[str, Any]) -> dict[str, Any]:
        from signflow_zoo.bench.capacity import CapacityConfig, search_capacity

        assert self.runner is not None
        return search_capacity(self.runner, labels, clips, CapacityConfig(**config))

    def server(self, requests, config: dict[str, Any]) -> dict[str, Any]:
        from signflow_zoo.bench.server import ServerConfig, search_server

        assert self.runner is not None
        return search_server(self.runner, requests, ServerConfig(**config))

    def offline(self, features, mask, batches) -> dict[str, Any]:
        from signflow_zoo.bench.server import offline_throughput

        assert self.runner is not None
        return offline_throughput(self.runner, features, mask, batches)

    def memory(self) -> dict[str, Any]:
        peak, now = _status_kb("VmHWM"), _status_kb("VmRSS")
        out: dict[str, Any] = {"baseline_mb": round(self.baseline_kb / 1024, 1), "peak_mb": round(peak / 1024, 1),
               "rss_mb": round(now / 1024, 1),
               "added_mb": round(max(0.0, peak - self.baseline_kb) / 1024, 1),
               "what": "peak resident memory of this backend's worker above its resident memory just before "
                       "prepare (VmHWM - VmRSS)" + ("" if self.peak_reset else "; peak counter not resettable here")}
        if self.device_free0 is not None and self.device_min_free is not None:
            out["device_added_mb"] = round((self.device_free0 - self.device_min_free) / 2**20, 1)
            out["what"] += "; device: GPU memory in use above the level before prepare, sampled after prepare and every block"
        return out

    def _device_sample(self, first: bool = False) -> None:
        if not first and self.device_free0 is None:
            return
        try:
            import torch

            if not torch.cuda.is_available():
                return
            free, _ = torch.cuda.mem_get_info()
        except Exception:  # noqa: BLE001 - no device memory figure, said by its absence
            return
        if first:
            self.device_free0 = self.device_min_free = free
        else:
            assert self.device_min_free is not None  # set with device_free0
            self.device_min_free = min(self.device_min_free, free)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


def _serve(conn, spec: WorkerSpec) -> None:
    os.environ.clear()
    os.environ.update(spec.env)
    worker = _Worker(spec)
    while True:
        try:
            cmd, args = conn.recv()
        except (EOFError, OSError):
            break
        try:
            result = getattr(worker, cmd)(*args)
            conn.send(("ok", result))
        except BaseException as exc:  # noqa: BLE001 - every failure is the harness's to report
            conn.send(("err", type(exc).__name__, str(exc).strip()[:2000], traceback.format_exc(limit=8)))
            if isinstance(exc, KeyboardInterrupt):
                break
        if cmd == "close":
            break
    conn.close()
    sys.stdout.flush()

