import time
import torch
from signflow_zoo.model import build_model
from signflow_zoo.zoo import get_model_config
def t(fn, n=50):
    for _ in range(10): fn()
    torch.cuda.synchronize(); s = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - s) / n * 1e3
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
for preset in ("lightweight", "medium", "large", "xlarge"):
    m = build_model(get_model_config(preset), 20).cuda().eval()
    for b in (1, 256):
        x = torch.randn(b, 64, 469, device="cuda"); mk = torch.ones(b, 64, dtype=torch.bool, device="cuda")
        with torch.inference_mode():
            a = t(lambda: m(x, mk))
            with torch.backends.cudnn.flags(enabled=False):
                c = t(lambda: m(x, mk))
                ref = m(x, mk)
            err = (ref.double() - m.cpu()(x.cpu(), mk.cpu()).double().cuda()).abs().max().item(); m.cuda()
        print(preset, "b", b, "cudnn fp32 %.3f ms | cudnn off (native conv) fp32 %.3f ms | err vs cpu %.2e" % (a, c, err), flush=True)
