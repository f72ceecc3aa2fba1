"""Why is torch-eager fp32 at batch 1 slow on CUDA for medium/large? Times variants of one forward pass."""
import time

import torch

from signflow_zoo.model import build_model
from signflow_zoo.zoo import get_model_config


def t(fn, n=50):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    s = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - s) / n * 1e3


for preset in ("lightweight", "large"):
    m = build_model(get_model_config(preset), 20).cuda().eval()
    for b in (1, 256):
        x = torch.randn(b, 64, 469, device="cuda")
        mk = torch.ones(b, 64, dtype=torch.bool, device="cuda")
        row = []
        for tf32, bench in ((False, False), (True, False), (False, True)):
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.benchmark = bench
            with torch.inference_mode():
                row.append(t(lambda: m(x, mk)))
                xc = m.input_norm(x).transpose(1, 2)
                conv = t(lambda: [c(xc) for c in m.stem])
            row.append(conv)
        print(preset, "b", b, "full/conv ms: tf32 off %.3f/%.3f | tf32 on %.3f/%.3f | off+cudnn.benchmark %.3f/%.3f" % tuple(row), flush=True)
