"""What machine and software produced a result: tagged on every run so results compare across hosts.

The host name is ``$SIGNFLOW_ZOO_HOST`` when set, else the machine's hostname (:func:`host_name`).

The *host class* (:func:`host_class`) is what decides speed, in one short stable string: CPU vendor, family
and model, the widest ISA tier it has (AMX, AVX-512 with BF16, AVX-512 with VNNI, AVX-512, AVX2), the CPUs
this process may use (affinity and cgroup quota) and the GPU. Two machines of one class give comparable
milliseconds; across classes only ratios and normalized values compare (``report`` says so). The model
name alone does not tell: AMD EPYC Zen 3 (AVX2 only) and Zen 5 (AVX-512, BF16, VNNI) both read "AMD EPYC".
"""

from __future__ import annotations

import math
import os
import platform
import re
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


# the ISA flags that decide which kernels a runtime picks (int8 with or without VNNI, bf16, AMX tiles)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")
# widest first: the first tier whose flags a CPU has names it in the host class
ISA_TIERS = (("amx", ("amx_bf16",)), ("avx512bf16", ("avx512_bf16",)), ("avx512vnni", ("avx512_vnni",)),
             ("avx512", ("avx512f",)), ("avx2", ("avx2",)))
VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


def cpu_info(cpuinfo: str | None = None) -> dict[str, str]:
    """Vendor, family, model, stepping, model name and the :data:`ISA_FLAGS` this CPU has (first processor
    of ``/proc/cpuinfo``, or of the given text); keys missing where the platform does not say."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: a host's CPUs are alike
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    out = {"vendor": fields.get("vendor_id", platform.machine()), "family": fields.get("cpu family", ""),
           "model": fields.get("model", ""), "stepping": fields.get("stepping", ""),
           "model_name": fields.get("model name", platform.processor() or platform.machine())}
    present = set((fields.get("flags") or fields.get("Features") or "").split())
    out["flags"] = " ".join(f for f in ISA_FLAGS if f in present)
    return out


CPU_FLAGS_ENV_VAR = "SIGNFLOW_ZOO_CPU_FLAGS"


def cpu_flags() -> frozenset[str]:
    """Every flag of this CPU (``/proc/cpuinfo``), or the space-separated ``$SIGNFLOW_ZOO_CPU_FLAGS``: artifact
    kinds whose build depends on the CPU (:meth:`~signflow_zoo.backends.kinds.ArtifactKind.host_choices`)
    decide from these, and the override builds them for another CPU (or tests the other choice)."""
    given = os.environ.get(CPU_FLAGS_ENV_VAR)
    if given is not None:
        return frozenset(given.split())
    return _cpu_flags()


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def isa_tier(flags: str) -> str:
    have = set(flags.split())
    for tier, needs in ISA_TIERS:
        if all(f in have for f in needs):
            return tier
    return "base"


def _cgroup_cpu_quota() -> float | None:
    """CPUs the cgroup quota allows (v2 ``cpu.max``, v1 ``cfs_quota_us / cfs_period_us``), None if unlimited."""
    try:
        max_quota, max_period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if max_quota == "max" else int(max_quota) / int(max_period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus() -> float:
    """CPUs this process may run on: its affinity mask, capped by the cgroup's CPU quota."""
    try:
        n: float = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return min(n, quota) if quota else n


def memory_gb() -> float | None:
    """Memory this process may use: MemTotal, capped by the cgroup's memory limit."""
    total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(f).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit < (total or math.inf):
            total = limit
    return None if total is None else round(total / 2**30, 1)


def gpu_driver() -> str:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return ""
    m = re.search(r"Kernel Module\s+([\d.]+)", text)
    return m.group(1) if m else ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def host_class(cpu: dict[str, str] | None = None, cpus: float | None = None, gpu: str | None = None) -> str:
    """A short stable name of what decides speed, e.g. ``amd-f25m1-avx2-2cpu`` (AMD family 25 model 1, AVX2
    only, 2 usable CPUs) or ``intel-f6m143-amx-8cpu-nvidia-h100-80gb-hbm3``."""
    cpu = cpu_info() if cpu is None else cpu
    cpus = usable_cpus() if cpus is None else cpus
    gpu = gpu_model() if gpu is None else gpu
    vendor = VENDORS.get(cpu.get("vendor", ""), _slug(cpu.get("vendor", "")) or "cpu")
    fm = f"f{cpu['family']}m{cpu['model']}" if cpu.get("family") and cpu.get("model") else _slug(cpu.get("model_name", ""))[:24]
    n = f"{cpus:g}".replace(".", "p")
    name = f"{vendor}-{fm}-{isa_tier(cpu.get('flags', ''))}-{n}cpu"
    if gpu and gpu != "none":
        name += "-" + _slug(gpu)
    return name


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
        here = Path(__file__).resolve().parent.parent
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
    cpu, cpus, gpu = cpu_info(), usable_cpus(), gpu_model()
    mem = memory_gb()
    env = {
        "host": host,
        "host_class": host_class(cpu, cpus, gpu),
        "cpu": cpu_model(),
        "cpu_vendor": cpu["vendor"],
        "cpu_family": cpu["family"],
        "cpu_model_id": cpu["model"],
        "cpu_stepping": cpu["stepping"],
        "cpu_flags": cpu["flags"],
        "cpu_count": str(os.cpu_count()),
        "cpus_usable": f"{cpus:g}",
        "memory_gb": "" if mem is None else f"{mem:g}",
        "gpu": gpu,
        "gpu_driver": gpu_driver(),
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
