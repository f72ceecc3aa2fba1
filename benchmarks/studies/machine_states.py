"""Is a slow ONNX Runtime reading a property of one session, or a state of the machine at that time?

Starts ``--processes`` fresh processes one after another; each builds one ONNX Runtime session on the same
model (lightweight, batch 1 by default), warms it, and times 1,500 calls alone, printing the p50 of each
third. If the slow readings are per session, p50s within a process agree while processes differ at random;
if they are a machine state, consecutive processes share it and it changes over minutes. The observations
quoted in ``benchmarks/SCHEDULE.md`` ("Machine states") came from this script.

    python benchmarks/studies/machine_states.py --threads 2 --processes 10
    python benchmarks/studies/machine_states.py --threads 2 --no-spin
    python benchmarks/studies/machine_states.py --threads 1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from schedule_study import build_artifacts

CHILD = """
import sys, time
import numpy as np
import onnxruntime as ort
path, threads, spin, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.add_session_config_entry("session.intra_op.allow_spinning", spin)
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
names = [i.name for i in s.get_inputs()]
x = np.random.default_rng(0).standard_normal((batch, 64, 469)).astype(np.float32)
feed = {names[0]: x}
if len(names) > 1:
    feed[names[1]] = np.ones((batch, 64), bool)
for _ in range(50):
    s.run(None, feed)
t = []
for _ in range(1500):
    t0 = time.perf_counter_ns()
    s.run(None, feed)
    t.append(time.perf_counter_ns() - t0)
t = np.array(t) / 1e6
print(" ".join(f"{np.median(part):.3f}" for part in np.array_split(t, 3)))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="lightweight")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--no-spin", action="store_true", help="ONNX Runtime's intra-op spinning off")
    args = ap.parse_args(argv)
    spin = "0" if args.no_spin else "1"
    with tempfile.TemporaryDirectory() as tmp:
        arts = build_artifacts(args.preset, Path(tmp))
        print(f"{args.preset} b{args.batch}, {args.threads} threads, spinning {'off' if args.no_spin else 'on'}")
        print("| process | started | p50 ms, 1st / 2nd / 3rd third of 1,500 calls |")
        print("|---|---|---|")
        for i in range(args.processes):
            started = time.strftime("%H:%M:%S")
            out = subprocess.run([sys.executable, "-c", CHILD, str(arts.onnx), str(args.threads), spin,
                                  str(args.batch)], capture_output=True, text=True)
            text = out.stdout.strip() if out.returncode == 0 else f"failed: {out.stderr.strip()[-200:]}"
            print(f"| {i} | {started} | {text.replace(' ', ' / ')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
