"""torch-eager: the PyTorch fp32 reference, on CUDA when torch sees a GPU, else CPU."""

from __future__ import annotations

import os
from collections import Counter
from contextlib import nullcontext
from typing import Any, ClassVar

import numpy as np

from signflow_zoo.api import Artifacts, Availability, Runner, hookimpl

# torch dtypes -> the project's precision names (signflow_zoo.backends.parity); torch device types -> device kinds
TORCH_PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int8": "int8",
                    "qint8": "int8", "quint8": "int8"}
TORCH_DEVICES = {"cpu": "cpu", "cuda": "gpu", "xpu": "gpu", "mps": "gpu"}


def torch_precision(model: Any, autocast: str | None = None) -> dict[str, str]:
    """What a PyTorch ``model`` really runs, as ``Runner.effective_precision`` returns it: the dtype and device of
    most of its parameters (by elements); under ``autocast`` (a dtype name such as ``"bfloat16"``) that dtype, in
    which autocast runs matmuls and convolutions; float32 on a GPU whose matmuls may use TF32 (PyTorch's
    ``allow_tf32``, compute capability 8.0 or newer) is ``tf32``."""
    import torch

    dtypes: Counter = Counter()
    devices: Counter = Counter()
    for p in model.parameters():
        dtypes[str(p.dtype).removeprefix("torch.")] += p.numel()
        devices[p.device] += p.numel()
    dtype, n = dtypes.most_common(1)[0] if dtypes else ("float32", 0)
    device = devices.most_common(1)[0][0] if devices else torch.device("cpu")
    share = "all" if n == sum(dtypes.values()) else f"{100 * n / sum(dtypes.values()):.0f}% of"
    precision = TORCH_PRECISIONS.get(dtype, dtype)
    how = f"PyTorch: {share} {sum(dtypes.values()):,} parameters {dtype} on {device}"
    if autocast:
        precision = TORCH_PRECISIONS.get(autocast, autocast)
        how += f"; run under torch.autocast({device.type!r}, {autocast}): matmuls and convolutions in {autocast}"
    elif device.type == "cuda" and precision == "fp32":
        matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        if matmul and torch.cuda.get_device_capability(device)[0] >= 8:
            precision = "tf32"
        how += f"; TF32 allowed for matmuls {matmul}, for cuDNN convolutions {conv}"
    return {"precision": precision, "device": TORCH_DEVICES.get(device.type, device.type), "how": how}


class TorchEagerRunner(Runner):
    name = "torch-eager"
    artifact = "torch"
    precision = "fp32"
    summary = "PyTorch eager mode, fp32 (the parity reference); CUDA if available"
    requires = ("torch",)

    @classmethod
    def availability(cls) -> Availability:
        import torch  # importable: ``requires`` is checked first

        return Availability.yes("cuda" if torch.cuda.is_available() else "cpu")

    def prepare(self, artifacts: Artifacts) -> None:
        import torch

        self.torch = torch
        dev = self.options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(dev)
        self.asynchronous = self.device.type == "cuda"
        if self.device.type == "cuda":
            # declared precision is fp32: keep cuDNN convolutions and matmuls off TF32
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        if self.options.threads:
            torch.set_num_threads(int(self.options.threads))
        self.model = artifacts.torch_model(device=str(self.device)).eval()
        self.input_dim = self.model.input_dim

    # cuDNN's fp32 (TF32 off) Conv1d for the 469-channel stem took ~100 ms at batch 1 on an H100 for
    # d_model >= 256, against ~2.5 ms with PyTorch's native convolution (same fp32 result); at batch 256
    # cuDNN is faster. Measured at batch 1 and 256 only (benchmarks/RESULTS.md); the cut-off between
    # them is a guess.
    CUDNN_MIN_BATCH: ClassVar[int] = 32

    def infer(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        small_on_cuda = self.device.type == "cuda" and features.shape[0] < self.CUDNN_MIN_BATCH
        conv = torch.backends.cudnn.flags(enabled=False, allow_tf32=False) if small_on_cuda else nullcontext()
        with torch.inference_mode(), conv:
            x = torch.from_numpy(features).to(self.device, non_blocking=True)
            m = torch.from_numpy(mask).to(self.device, non_blocking=True)
            return self.model(x, m).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def effective_precision(self) -> dict[str, str]:
        """Read back from the loaded model: its parameters' dtype and device (:func:`torch_precision`)."""
        return torch_precision(self.model)

    def describe(self) -> dict:
        torch = self.torch
        d = {"backend": self.name, "precision": self.precision, "provider": f"torch-{self.device.type}",
             "device": str(self.device), "threads": torch.get_num_threads(), "torch": torch.__version__,
             "spinning": "OpenMP wait policy " + os.environ.get("OMP_WAIT_POLICY", "default (spin, then sleep)")}
        if self.device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.device)
            d["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        return d

    def close(self) -> None:
        self.model = None


@hookimpl
def register_runners(register):
    register(TorchEagerRunner)
