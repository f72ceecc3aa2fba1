#!/usr/bin/env bash
# GPU check: ONE command on the accelerator machine, from the repository root, ~8 minutes of device time.
# It verifies and times every GPU backend (onnx-cuda, onnx-cuda-graph, onnx-cuda-graph-fp16, onnx-tensorrt,
# torch-eager on CUDA, torch-compile, torch-compile-bf16) and compares them with torch.compile.
#
# Before it (benchmarks/RESULTS.md, "GPU paths not yet verified", has the exact calls):
#   here:  ../shared/tools/ort-gpu-chunks.sh   (onnxruntime-gpu in .ortgpu/c1..c4) and small wheels in .whl/ (tqdm)
#   there: three runs copying .ortgpu/c1..c3 to /tmp/ortchunks; then this script, carrying .ortgpu/c4 and .whl.
# Without onnxruntime-gpu the ONNX GPU backends are rows marked unavailable (with the reason); the torch ones run.
# Writes everything under $OUT (default /tmp/gpu-out); prints a short table last. BUDGET (s) caps the whole run.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
BUDGET=${BUDGET:-470}
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
export PYTHONPATH=/tmp/ortsite:/tmp/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1 SIGNFLOW_ZOO_HOME=/tmp/zoo

# 1. onnxruntime-gpu: reassemble the CUDA provider once (the c4 step of ort-gpu-chunks.sh)
if [ ! -d /tmp/ortsite/onnxruntime ] && [ -f .ortgpu/c4/rest.tgz ] && ls /tmp/ortchunks/part* >/dev/null 2>&1; then
  mkdir -p /tmp/ortsite && tar xzf .ortgpu/c4/rest.tgz -C /tmp/ortsite &&
    cat /tmp/ortchunks/part* | xz -d -T8 > /tmp/ortsite/onnxruntime/capi/libonnxruntime_providers_cuda.so ||
    echo "reassembling onnxruntime-gpu failed" | tee "$OUT/ortgpu.txt"
fi
# 2. install: no package index there
ls .whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed" | tee "$OUT/install.txt"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, onnxruntime as o; getattr(o, 'preload_dlls', lambda: None)(); print('torch', torch.__version__, 'cuda', torch.version.cuda, '| onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$OUT/versions.txt"
python3 -m signflow_zoo.cli.commands backends 2>&1 | tee "$OUT/backends.txt"
# 3. the floor under every GPU call: copying a batch of features to the device
timeout 60 python3 benchmarks/studies/gpu_transfer.py --batch-sizes 1,256 2>&1 | tee "$OUT/transfer.txt"
# 4. conformance + parity of every backend on the real GPU (tiny model) and the GPU-only capture checks
#    (the slow tests there are CPU-side: inductor on CPU, the harness with CPU variants)
timeout $(( $(left) > 150 ? 130 : 60 )) python3 -m pytest -q -p no:cacheprovider -m "not slow" --durations=8 \
  tests/test_gpu_backends.py "tests/test_plugins.py::test_every_registered_backend_conforms" 2>&1 | tail -n 25 | tee "$OUT/pytest.txt"
# 5. the bench: large first (the targets), then the other presets in the time left
BENCH=(--backends all --batch-sizes 1,256 --no-track --no-progress --no-stream --exporter legacy
       --warmup 10 --min-iters 20 --min-time 0.3 --timeout 120)
# (the result file in /tmp/zoo/results is written after every preset: a timeout keeps what was finished)
t=$(( $(left) > 260 ? 240 : $(left) - 20 ))
if [ "$t" -gt 30 ]; then
  timeout "$t" python3 -m signflow_zoo.cli.commands bench --preset large "${BENCH[@]}" > "$OUT/bench-large.txt" 2>&1
  echo "bench large: exit $? ($(left) s of the budget left)"
fi
if [ "$(left)" -gt 60 ]; then
  timeout $(( $(left) - 25 )) python3 -m signflow_zoo.cli.commands bench --preset lightweight,baseline,medium,xlarge "${BENCH[@]}" \
    > "$OUT/bench-rest.txt" 2>&1
  echo "bench other presets: exit $?"
fi
cp /tmp/zoo/results/*.json "$OUT/" 2>/dev/null
tail -n 5 "$OUT"/bench-*.txt
ls "$OUT"
# 6. the short table, last
python3 benchmarks/gpu_summary.py /tmp/zoo/results/bench-*.json 2>&1 | tee "$OUT/summary.md"
