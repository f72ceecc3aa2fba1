#!/usr/bin/env bash
# GPU check, run on the accelerator machine from the repository root (see README "GPU").
# Expects onnxruntime-gpu unpacked in /tmp/ortsite and small wheels (tqdm) in .whl/.
# Writes everything under $OUT; prints a short table last.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=/tmp/ortsite:/tmp/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
{
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, onnxruntime as o; o.preload_dlls(); print('torch', torch.__version__, 'cuda', torch.version.cuda, '| onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$OUT/versions.txt"
python3 -m signflow_zoo.cli backends 2>&1 | tee "$OUT/backends.txt"
# conformance + parity of every backend (onnx-cuda and torch-eager on CUDA included) on the real GPU
timeout ${PYTEST_TIMEOUT:-150} python3 -m pytest -q -p no:cacheprovider tests/test_plugins.py tests/test_model.py 2>&1 | tail -n 15 | tee "$OUT/pytest.txt"
# the main job, every preset, every backend, batch 1 and 256
SIGNFLOW_ZOO_HOME=/tmp/zoo timeout ${BENCH_TIMEOUT:-420} python3 -m signflow_zoo.cli bench --preset ${PRESETS:-all} --backends all \
  --batch-sizes 1,256 --min-iters 20 --min-time 0.5 --no-track --no-progress --json "$OUT/gpu-bench.json" 2>&1 | tee "$OUT/bench.txt" | tail -n 40
cp /tmp/zoo/results/*.json "$OUT/" 2>/dev/null; ls "$OUT"
