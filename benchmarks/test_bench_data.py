"""Training from data on disk (pytest-benchmark): memory and throughput of the DataLoader path.

An LSFB-ISOL-layout set of synthetic clips (no face files) is written under a temp dir, then each mode
runs in a fresh process (so its peak RSS is its own): ``load_data("lsfb:DIR", in_memory=...)``, then
``SignTrainer.fit`` for a fixed number of steps (one epoch over the first STEPS x 32 clips of the training
split) with the lightweight preset (batch 32, no MLflow; validation on 64 clips).

- ``disk-0w``, ``disk-1w``, ``disk-2w``: the training split stays on disk, read batch by batch with no
  DataLoader worker (features computed in the training process), one or two workers;
- ``memory``: the training split's features held in memory, as sets under 1 GiB are by default.

Recorded in ``extra_info`` and printed: peak RSS of the training process (VmHWM) over its whole life and
over the fit alone (VmHWM reset when the fit starts), RSS after loading, peak RSS of its largest worker
(ru_maxrss of the reaped children; a forked worker's RSS counts the pages it shares with the trainer), the
training split's features size, load time, training throughput (clips/s over the fit, validation
included) and CPU time per trained clip (trainer and workers: steadier than wall time on a shared machine).
Never asserted: timing asserts make flaky tests.

Full run:   flock /tmp/sfz-measure.lock pytest benchmarks/test_bench_data.py --bench-mode full   (10,000 clips)
Short mode: pytest benchmarks/test_bench_data.py   (the default, and CI's: 300 clips, 4 steps; also whenever
            --benchmark-disable is given)
Figures: benchmarks/RESULTS.md, "Training from disk".
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FULL = (20, 25, 20)  # signs x signers x takes: 10,000 clips
SHORT = (5, 6, 10)  # 300 clips
STEPS = {"full": 60, "short": 4}

WRITE = """
import sys
from signflow_zoo.data.loading import write_lsfb_fixture
from signflow_zoo.data.synthetic import SyntheticSpec, generate
classes, signers, takes = (int(a) for a in sys.argv[2:5])
clips, names = generate(SyntheticSpec(num_classes=classes, num_signers=signers, clips_per_signer_per_class=takes,
                                      seed=0))
write_lsfb_fixture(sys.argv[1], clips, names, official_splits=False, face=False)
"""

TRAIN = """
import json, resource, sys, time
import torch
from signflow_zoo.data.batches import default_workers
from signflow_zoo.data.loading import load_data
from signflow_zoo.data.features import FEATURE_DIM, SEQ_LEN
from signflow_zoo.model.network import build_model
from signflow_zoo.model.training import SignTrainer, TrainingConfig
from signflow_zoo.model.zoo import get_model_config

root, mode, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
workers = int(mode[5:-1]) if mode.startswith("disk-") else None  # "disk-2w": 2 workers


def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":")) / 1024


t = time.perf_counter()
splits = load_data(f"lsfb:{root}", in_memory=mode == "memory")
load_s = time.perf_counter() - t
split_clips = len(splits.train)
train, val = splits.train.subset(range(steps * 32)), splits.val.subset(range(min(64, len(splits.val))))
torch.manual_seed(0)
model = build_model(get_model_config("lightweight"), num_classes=len(val.class_names))
cfg = TrainingConfig(num_epochs=1, batch_size=32, progress=False, use_mlflow=False, num_workers=workers, amp="off")
trainer = SignTrainer(model, cfg, val.class_names)
life_hwm, after_load = status("VmHWM"), status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # resets VmHWM to the current RSS
cpu, t = time.process_time(), time.perf_counter()
trainer.fit(train, val)
fit_s = time.perf_counter() - t
del trainer
fit_hwm = status("VmHWM")
children = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu_s = time.process_time() - cpu + children.ru_utime + children.ru_stime
print(json.dumps({
    "mode": mode, "split_clips": split_clips, "steps": steps, "trained_clips": len(train),
    "load_s": round(load_s, 2), "fit_s": round(fit_s, 2),
    "clips_per_s": round(len(train) / fit_s, 1), "cpu_ms_per_clip": round(1000 * cpu_s / len(train), 1),
    "peak_rss_mb": round(max(life_hwm, fit_hwm), 1), "rss_after_load_mb": round(after_load, 1),
    "fit_peak_rss_mb": round(fit_hwm, 1), "worker_peak_rss_mb": round(children.ru_maxrss / 1024, 1),
    "split_features_mb": round(split_clips * SEQ_LEN * FEATURE_DIM * 4 / 2**20, 1),
    "workers": default_workers(train) if workers is None else workers,
}))
"""


def _short(config) -> bool:
    """Short unless ``--bench-mode full`` (CI runs short mode, as for the other suites); a disabled benchmark is short."""
    return config.getoption("bench_mode") != "full" or bool(config.getoption("benchmark_disable", default=False))


@pytest.fixture(scope="module")
def lsfb_on_disk(request, tmp_path_factory):
    """The set, written by a separate process so that generating it costs the benchmark nothing."""
    shape = SHORT if _short(request.config) else FULL
    root = tmp_path_factory.mktemp("bench-data") / "lsfb"
    subprocess.run([sys.executable, "-c", WRITE, str(root), *map(str, shape)], check=True)
    return root


@pytest.mark.parametrize("mode", ["disk-0w", "disk-1w", "disk-2w", "memory"])
def test_train_from_disk(benchmark, request, lsfb_on_disk, mode):
    result = {}

    def run():
        steps = STEPS["short" if _short(request.config) else "full"]
        out = subprocess.run([sys.executable, "-c", TRAIN, str(lsfb_on_disk), mode, str(steps)], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\n{json.dumps(result)}")
    assert result["trained_clips"] == result["steps"] * 32 and result["clips_per_s"] > 0
