"""torch-compile: the PyTorch model compiled by TorchInductor; on CUDA with CUDA graphs (what
``mode="reduce-overhead"`` turns on: one graph recorded per input shape on first use), so that a batch-1
call is a graph replay.

* ``torch-compile``: float32 weights, TF32 matmuls and convolutions (precision ``tf32``).
* ``torch-compile-bf16``: bfloat16 autocast (matmuls and convolutions in bf16; norms, softmax and the
  positional encoding in fp32), float32 logits (precision ``bf16``). Not ``model.to(bfloat16)``: the
  model builds its positional encoding in float32 from ``torch.arange``, which then meets bf16 weights.

Inductor options: ``triton.cudagraphs`` on CUDA, and ``freezing`` (weights become constants, so the bf16
casts and weight layouts are folded once at compile time instead of on every call). Compilation is
``dynamic=True`` and ``fullgraph=True``: one graph for every batch >= 2 and frame count (batch 1 is
specialised, PyTorch's rule for size-1 dimensions), compiled at prepare for [1, 64] and [2, 64]
(``RunnerOptions.extra["compile_shapes"]``); how long that took is ``describe()["compile_s"]``. A graph
break or a recompile past dynamo's limit raises instead of silently running eager code.

The multiscale Conv1d stem runs as one matmul over unfolded windows (:class:`Conv1dAsMatmul`, same result):
on an H100, cuDNN's kernels for its 469 input channels took ~100 ms (fp32) / 6.3 ms (TF32) at batch 1
(benchmarks/RESULTS.md), against a model whose other layers take well under a millisecond.

On the CPU inductor does not pay for itself (CPU_FINDING below, measured with
``benchmarks/studies/compile_cpu.py``); there the backend is unavailable unless ``SIGNFLOW_ZOO_TORCH_COMPILE_CPU=1``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from typing import Any, ClassVar

import numpy as np

from signflow_zoo.api import Artifacts, Availability, BackendError, Runner, hookimpl

from signflow_zoo.backends.builtin.torch_eager import torch_precision

CPU_OPT_IN = "SIGNFLOW_ZOO_TORCH_COMPILE_CPU"
CPU_FINDING = ("on CPU it measured 1.0-1.1x over eager for lightweight at batch 1 and 0.3-0.6x at batch 8, after a "
               "36-46 s compile (2 cores, 2026-11-26)")
COMPILE_SHAPES = ((1, 64), (2, 64))


def _conv_as_matmul_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Conv1dAsMatmul(nn.Module):
        """A Conv1d (stride 1, dilation 1, one group, zero padding k // 2) as unfold + one matmul."""

        def __init__(self, conv: nn.Conv1d):
            super().__init__()
            out_ch, in_ch, k = conv.weight.shape
            self.k, self.pad = k, k // 2
            self.weight = nn.Parameter(conv.weight.detach().reshape(out_ch, in_ch * k).t().contiguous())
            self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C_in, T] -> [B, C_out, T], as Conv1d
            b, c, t = x.shape
            windows = F.pad(x.transpose(1, 2), (0, 0, self.pad, self.pad)).unfold(1, self.k, 1)  # [B, T, C_in, k]
            y = windows.reshape(b, t, c * self.k) @ self.weight
            if self.bias is not None:
                y = y + self.bias
            return y.transpose(1, 2)

    return Conv1dAsMatmul


def convs_as_matmul(model) -> int:
    """Replace every same-padded, stride-1 ``nn.Conv1d`` of ``model`` in place; return how many."""
    from torch import nn

    cls = _conv_as_matmul_class()
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.Conv1d) and child.stride == (1,) and child.dilation == (1,)
                    and child.groups == 1 and child.padding_mode == "zeros"
                    and child.padding == (child.kernel_size[0] // 2,) and child.kernel_size[0] % 2 == 1):
                setattr(parent, name, cls(child))
                swapped += 1
    return swapped


def model_forward(model, device_type: str, autocast: str | None):
    """What gets compiled: the model, under autocast when asked, returning float32 logits."""
    import torch

    if autocast is None:
        return model
    dtype = getattr(torch, autocast)

    def forward(features, mask):
        with torch.autocast(device_type, dtype=dtype):
            return model(features, mask).float()

    return forward


class TorchCompileRunner(Runner):
    name = "torch-compile"
    artifact = "torch"
    precision = "tf32"
    device_kind = "gpu"
    summary = "PyTorch compiled by TorchInductor, CUDA graphs (reduce-overhead), TF32; CUDA only unless opted in"
    autocast: ClassVar[str | None] = None  # "bfloat16": run under torch.autocast with that dtype
    requires = ("torch",)  # and triton on CUDA (checked below: the CPU path does not need it)

    @classmethod
    def availability(cls) -> Availability:
        import torch  # importable: ``requires`` is checked first

        if torch.cuda.is_available():
            if importlib.util.find_spec("triton") is None:
                return Availability.no("inductor on CUDA needs triton, which is not installed")
            return Availability.yes(f"cuda: {torch.cuda.get_device_name(0)}")
        if os.environ.get(CPU_OPT_IN, "").lower() not in ("1", "true", "yes"):
            return Availability.no(f"no CUDA device; {CPU_FINDING}: set {CPU_OPT_IN}=1 to run it on CPU anyway")
        compiler = os.environ.get("CXX") or "g++"
        if not (shutil.which(compiler) or shutil.which("clang++")):
            return Availability.no(f"inductor on CPU needs a C++ compiler ({compiler} or clang++ on PATH)")
        return Availability.yes(f"cpu ({CPU_OPT_IN}=1; {CPU_FINDING})")

    def prepare(self, artifacts: Artifacts) -> None:
        import torch

        self.torch = torch
        dev = self.options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(dev)
        if self.options.threads:
            torch.set_num_threads(int(self.options.threads))
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # declared tf32 (bf16 variant: bf16 matmuls anyway)
            torch.backends.cudnn.allow_tf32 = True
        dynamo = torch._dynamo.config
        if hasattr(dynamo, "fail_on_recompile_limit_hit"):
            dynamo.fail_on_recompile_limit_hit = True  # never fall back to eager under this backend's name
        model = artifacts.torch_model("cpu").eval()
        self.convs_swapped = convs_as_matmul(model)
        self.model = model.to(self.device)
        self.input_dim = self.model.input_dim
        self.cudagraphs = self.device.type == "cuda"
        self.inductor: dict[str, Any] = {"triton.cudagraphs": self.cudagraphs, "freezing": True}
        forward = model_forward(self.model, self.device.type, self.autocast)
        self.compiled = torch.compile(forward, dynamic=True, fullgraph=True, options=self.inductor)
        self.compile_s: dict[str, float] = {}
        rng = np.random.default_rng(0)
        for b, t in [tuple(s) for s in (self.options.extra or {}).get("compile_shapes", COMPILE_SHAPES)]:
            x = rng.standard_normal((b, t, self.input_dim)).astype(np.float32)
            t0 = time.perf_counter()
            try:
                self.infer(x, np.ones((b, t), bool))
            except Exception as exc:  # noqa: BLE001 - a compile failure is this backend's, with dynamo's words
                raise BackendError(f"torch.compile failed at shape {b}x{t}: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:300]}") from None
            self.compile_s[f"{b}x{t}"] = round(time.perf_counter() - t0, 2)

    def infer(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(features).to(self.device)
            m = torch.from_numpy(mask).to(self.device)
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()  # the last call's outputs were already copied out
            return self.compiled(x, m).cpu().numpy()

    def effective_precision(self) -> dict[str, str]:
        """Read back from the compiled model: its parameters' dtype and device, and the autocast it is compiled
        under (:func:`~signflow_zoo.backends.builtin.torch_eager.torch_precision`): on the CPU, where TF32 does not
        exist, ``torch-compile`` runs fp32."""
        out = torch_precision(self.model, self.autocast)
        return {**out, "how": out["how"] + "; compiled by TorchInductor"}

    def describe(self) -> dict[str, Any]:
        torch = self.torch
        d = {"backend": self.name, "precision": self.precision, "provider": f"torch-inductor-{self.device.type}",
             "device": str(self.device), "threads": torch.get_num_threads(), "torch": torch.__version__,
             "autocast": self.autocast or "off", "inductor_options": dict(self.inductor), "cuda_graphs": self.cudagraphs,
             "dynamic": True, "fullgraph": True,
             "compile_s": dict(self.compile_s), "compile_total_s": round(sum(self.compile_s.values()), 2),
             "stem": f"{self.convs_swapped} Conv1d as unfold + matmul"}
        if self.device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.device)
            d["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        return d

    def close(self) -> None:
        self.model = self.compiled = None  # type: ignore[assignment]  # released; the runner is done


class TorchCompileBf16Runner(TorchCompileRunner):
    name = "torch-compile-bf16"
    precision = "bf16"
    autocast: ClassVar[str | None] = "bfloat16"
    summary = "torch-compile under bfloat16 autocast (float32 logits)"


@hookimpl
def register_runners(register):
    register(TorchCompileRunner)
    register(TorchCompileBf16Runner)
