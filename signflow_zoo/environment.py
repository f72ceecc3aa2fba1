"""What machine and software produced a result: tagged on every run so results compare across hosts.

The host name is ``$SIGNFLOW_ZOO_HOST`` when set, else the machine's hostname (:func:`host_name`).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("signflow-zoo", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "mlflow", "numpy", "pluggy")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_model() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return "none"


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return res.stdout.strip() if res.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


HOST_ENV_VAR = "SIGNFLOW_ZOO_HOST"


def host_name() -> str:
    """``$SIGNFLOW_ZOO_HOST`` when set (a stable name for a machine whose hostname changes, e.g. a
    container or a CI runner, or several simulated hosts on one machine), else the hostname."""
    return os.environ.get(HOST_ENV_VAR, "").strip() or socket.gethostname()


def environment() -> dict[str, str]:
    return dict(_environment(host_name()))


@lru_cache(maxsize=4)
def _environment(host: str) -> dict[str, str]:
    env = {
        "host": host,
        "cpu": cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "gpu": gpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }
    env.update({f"version.{k}": v for k, v in package_versions().items()})
    return env


def ort_builds_installed() -> list[str]:
    """Distributions providing the ``onnxruntime`` module: two at once overwrite each other's files."""
    found = []
    for name in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"):
        try:
            metadata.version(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            pass
    return found
