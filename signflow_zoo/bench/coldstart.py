"""Cold start: from a fresh process to the first prediction, per backend (autoscaled services pay it every start).

Each run launches a new Python interpreter (``python -m signflow_zoo.bench.coldstart``; nothing preloaded, unlike
the bench's workers) that imports the backend's plugin, constructs its runner, prepares it on the artifacts and
runs one clip. Phases, from the moment the process is launched:

- ``load_ms``: interpreter start and imports (the runtime and the plugin) up to the runner object;
- ``prepare_ms``: ``Runner.prepare``: reading the model file and building the session, compiling (OpenVINO),
  building an engine (TensorRT) or tracing (torch.compile; its compilation may also fall in the first call);
- ``first_call_ms``: the first inference on one clip;
- ``total_ms``: launch to the first result.

The median of ``runs`` (at least 3) runs is reported per phase, with every run kept. Caches a runtime keeps on
disk between processes (e.g. a compiled-model cache) count as they would for a restarted service.

The child receives its job (runner class by reference, options, artifacts, one clip) pickled on its stdin from
this process, as :mod:`multiprocessing` would send it, and answers one JSON line on stdout.
"""

from __future__ import annotations

import time

_T_START = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # first thing: the child's own start

import json  # noqa: E402 - after the start timestamp
import os  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

RUNS = 3
TIMEOUT_S = 300.0


def _now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _child() -> None:
    job = pickle.load(sys.stdin.buffer)  # the runner's module (its runtime, its plugin) is imported here
    runner = job["runner_cls"](job["options"])
    t_loaded = _now()
    runner.prepare(job["artifacts"])
    runner.prepared = True
    t_prepared = _now()
    runner.run(job["features"], job["mask"])
    if getattr(runner, "asynchronous", False):
        runner.synchronize()
    t_first = _now()
    runner.close()
    print(json.dumps({"start": _T_START, "loaded": t_loaded, "prepared": t_prepared, "first": t_first}), flush=True)


def measure_once(runner_cls: type, options: Any, artifacts: Any, features: Any, mask: Any,
                 timeout: float = TIMEOUT_S) -> dict[str, float]:
    """One cold start in a fresh interpreter: its phases in ms (``RuntimeError`` with the child's error)."""
    job = pickle.dumps({"runner_cls": runner_cls, "options": options, "artifacts": artifacts,
                        "features": features, "mask": mask})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # test-local and plugin modules import there too
    t0 = _now()
    proc = subprocess.run([sys.executable, "-m", "signflow_zoo.bench.coldstart"], input=job, capture_output=True,
                          timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(err[-1] if err else f"the cold-start process exited with code {proc.returncode}")
    t = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    ms = 1e-6
    return {"load_ms": (t["loaded"] - t0) * ms, "prepare_ms": (t["prepared"] - t["loaded"]) * ms,
            "first_call_ms": (t["first"] - t["prepared"]) * ms, "total_ms": (t["first"] - t0) * ms,
            "interpreter_ms": (t["start"] - t0) * ms}


def measure(runner_cls: type, options: Any, artifacts: Any, features: Any, mask: Any, runs: int = RUNS,
            timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """The record's ``cold_start`` section: the median of ``runs`` cold starts per phase, and every run."""
    import statistics

    each = [measure_once(runner_cls, options, artifacts, features, mask, timeout) for _ in range(max(3, runs))]
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in each), 2) for k in each[0]}
    out["runs"] = [{k: round(v, 2) for k, v in r.items()} for r in each]
    out["what"] = ("fresh interpreter -> runner constructed (load) -> prepare -> first call on one clip; median of "
                   f"{len(each)} runs")
    return out


__all__ = ["measure", "measure_once", "RUNS"]

if __name__ == "__main__":
    _child()
