"""Why an ONNX Runtime GPU execution provider does not bind: the shared libraries it cannot load.

onnxruntime-gpu ships each GPU provider as a library (``libonnxruntime_providers_cuda.so``, ``..._tensorrt.so``)
that needs CUDA, cuDNN or TensorRT libraries from elsewhere. When one is missing ONNX Runtime logs an error
and silently runs on the CPU; the probe session then says only *that* it did not bind. Here the provider
library's needed libraries (its ELF ``DT_NEEDED`` entries) are each loaded in this process (after
``onnxruntime.preload_dlls()`` where it exists, so libraries it found count as present), and the ones
that fail are named, with where they come from.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

PROVIDER_LIBRARIES = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}
# where a missing library comes from (first matching prefix)
TENSORRT = ("TensorRT runtime of that major version: pip tensorrt-cu13-libs / tensorrt-cu12-libs matching "
            "onnxruntime-gpu's CUDA, or TensorRT's lib folder on LD_LIBRARY_PATH")
SOURCES = (
    ("libcuda.so", "NVIDIA driver: none is installed here"),
    ("libnvinfer", TENSORRT),
    ("libnvonnxparser", TENSORRT),
    ("libcudnn", "cuDNN of that major version: pip nvidia-cudnn-*, or PyTorch's CUDA build"),
    ("libcu", "CUDA libraries of that major version: pip nvidia-*-cu* wheels, or PyTorch's CUDA build"),
)


def elf_needed(path: str | Path) -> list[str]:
    """The ``DT_NEEDED`` names of a 64-bit little-endian ELF shared library (empty if it is not one)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names: list[str] = []
    for sh_type, sh_offset, sh_size, sh_link in ((s[1], s[4], s[5], s[6]) for s in sections):
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[sh_link][4]
        for off in range(sh_offset, sh_offset + sh_size, 16):
            tag, val = struct.unpack_from("<qQ", data, off)
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strtab + val)
                names.append(data[strtab + val:end].decode())
    return names


def missing_libraries(path: str | Path) -> list[str]:
    """Each needed library of ``path`` that cannot be loaded here, with the loader's reason when it is not
    simply absent (e.g. one of *its* dependencies is missing)."""
    missing = []
    for name in elf_needed(path):
        try:
            ctypes.CDLL(name)
        except OSError as exc:
            msg = str(exc)
            missing.append(name if msg.startswith(f"{name}: cannot open shared object file") else f"{name} ({msg})")
    return missing


def where_from(name: str) -> str:
    return next((src for prefix, src in SOURCES if name.startswith(prefix)), "")


def provider_library_problem(provider: str, capi_dir: str | Path | None = None) -> str | None:
    """What keeps ``provider``'s library from loading, in one line; None when it loads (or is not one we know)."""
    lib = PROVIDER_LIBRARIES.get(provider)
    if lib is None:
        return None
    if capi_dir is None:
        try:
            import onnxruntime
        except ImportError:
            return None
        if hasattr(onnxruntime, "preload_dlls"):
            try:
                onnxruntime.preload_dlls()
            except Exception:  # noqa: BLE001 - what it could not find shows up below
                pass
        capi_dir = Path(onnxruntime.__file__).parent / "capi"
    path = Path(capi_dir) / lib
    if not path.is_file():
        return f"{lib} is not part of this onnxruntime install (the CPU build? install onnxruntime-gpu)"
    missing = missing_libraries(path)
    if not missing:
        return None
    groups: dict[str, list[str]] = {}
    for name in missing:
        groups.setdefault(where_from(name), []).append(name)
    return f"{lib} cannot load, missing " + "; ".join(
        ", ".join(names) + (f" ({src})" if src else "") for src, names in groups.items())
