"""``signflow-zoo doctor``: the checks a user pastes into a bug report.

Core parts (zoo, PyTorch model, ONNX export + ONNX Runtime CPU, plugin loading) must pass or the exit
code is 1; optional parts (tracking store, GPU backends, third-party plugins) are reported as warnings.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _check(results: list[dict], name: str, core: bool, fn) -> None:
    """Run one check; its detail (a plugin's text, a store's error) with any password redacted."""
    from signflow_zoo.results.store import redact

    t0 = time.perf_counter()
    try:
        detail = redact(str(fn()))
        status = "ok"
    except Exception as exc:  # noqa: BLE001 - the doctor reports, it does not crash
        text = redact(str(exc))
        first = text.splitlines()[0][:300] if text else ""
        detail = first if type(exc) is RuntimeError else f"{type(exc).__name__}: {first}"
        status = "FAIL" if core else "warn"
    results.append({"check": name, "status": status, "core": core, "detail": detail,
                    "seconds": round(time.perf_counter() - t0, 2)})


def run_doctor(json_out: bool = False, out: Any = None) -> int:
    """Run every check and print the verdicts to ``out`` (default stdout); 1 when a core check failed."""
    out = out or sys.stdout
    from signflow_zoo.common.environment import environment, ort_builds_installed
    from signflow_zoo.common.text import printable

    results: list[dict] = []
    env = environment()

    def versions():
        return ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in env.items() if k.startswith("version.")) + \
            f"; python {platform.python_version()}"

    def ort_build():
        builds = ort_builds_installed()
        if len(builds) > 1:
            raise RuntimeError(f"several onnxruntime builds installed ({', '.join(builds)}): they overwrite each "
                               "other's files; uninstall all and install exactly one")
        if not builds:
            raise RuntimeError("onnxruntime is not installed")
        import onnxruntime as ort

        return f"{builds[0]} {ort.__version__}, providers listed: {', '.join(ort.get_available_providers())}"

    def tracking():
        from signflow_zoo.results.store import redact_uri, tracking_uri
        from signflow_zoo.results.tracking import Tracker

        t = Tracker("signflow-zoo-doctor", quiet=True)
        if not t.active:
            raise RuntimeError(f"{redact_uri(tracking_uri())}: {t.reason}")
        return f"{t.uri} reachable"

    def zoo():
        from signflow_zoo.model.zoo import default_zoo

        z = default_zoo()
        return f"{len(z)} entries: {', '.join(z.names())}"

    def export():
        from signflow_zoo.model.export import export_to_onnx
        from signflow_zoo.model.network import SignTransformer

        m = SignTransformer(num_classes=5, d_model=24, nhead=2, num_layers=1, dim_feedforward=32).eval()
        with tempfile.TemporaryDirectory() as tmp:
            info = export_to_onnx(m, Path(tmp) / "m.onnx", exporter="legacy")
        return f"exported and verified at {len(info.verified)} shapes, max abs error {info.max_abs_error:.1e}"

    def plugins():
        from signflow_zoo.plugins import get_registry

        reg = get_registry()
        if reg.broken:
            raise RuntimeError("; ".join(f"{b.name} ({b.package}): {b.error}" for b in reg.broken))
        return f"{len(reg.runners)} backends from {len(reg.plugins)} plugins"

    _check(results, "versions", True, versions)
    _check(results, "onnxruntime build", True, ort_build)
    _check(results, "zoo", True, zoo)
    _check(results, "export + ONNX Runtime", True, export)
    _check(results, "plugins", False, plugins)
    try:
        from signflow_zoo.plugins import get_registry

        reg = get_registry()
        for name, be in reg.runners.items():
            core = be.plugin.package == "built-in" and be.cls.device_kind == "cpu"
            _check(results, f"backend {name}", core, lambda name=name: _avail(reg.availability(name)))
    except Exception:  # noqa: BLE001
        pass
    _check(results, "tracking store", False, tracking)
    failed = [r for r in results if r["status"] == "FAIL"]
    if json_out:
        print(json.dumps({"environment": env, "checks": results, "ok": not failed}, indent=1), file=out)
    else:
        print(printable(f"signflow-zoo doctor on {env['host']} ({env['cpu']}, {env['cpu_count']} cores, GPU: {env['gpu']})"),
              file=out)
        for r in results:  # details come from plugins and stores: no control characters reach the terminal
            print(f"  [{r['status']:>4}] {r['check']}: {printable(str(r['detail']))}", file=out)
        print("result:", "FAILED (core checks above)" if failed else "ok", file=out)
    return 1 if failed else 0


def _avail(av) -> str:
    if av.broken:
        raise RuntimeError(f"broken: {av.reason}")
    if not av.ok:
        raise RuntimeError(f"unavailable: {av.reason}")
    return f"available ({av.reason})" if av.reason else "available"
