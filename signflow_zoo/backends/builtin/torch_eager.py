"""torch-eager: the PyTorch fp32 reference, on CUDA when torch sees a GPU, else CPU."""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import ClassVar

import numpy as np

from signflow_zoo.api import Artifacts, Availability, Runner, hookimpl


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
