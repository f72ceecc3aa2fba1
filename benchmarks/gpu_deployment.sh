#!/usr/bin/env bash
# Deployment scenarios on the GPU: ONE command on the accelerator machine, after benchmarks/gpu_check.sh has set it up
# (same session: onnxruntime-gpu in /tmp/ortsite, the package installed), ~6 minutes of device time.
# What batching buys on a GPU, where a batch costs little more than one sequence: live streams within the 100 ms
# deadline alone and batched, the server rate, offline throughput and cold start, for large and xlarge.
# Writes under $OUT (default /tmp/gpu-out); BUDGET (s) caps the whole run. Not yet run on a GPU (docs/gpu.md).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
BUDGET=${BUDGET:-360}
export PYTHONPATH=/tmp/ortsite:/tmp/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1 SIGNFLOW_ZOO_HOME=/tmp/zoo
timeout "$BUDGET" python3 -m signflow_zoo.cli.commands bench --preset large,xlarge \
  --backends onnx-cuda,onnx-cuda-graph,torch-eager --scenarios capacity,server,offline,cold-start \
  --epochs 1 --no-track --no-progress --exporter legacy --timeout 120 > "$OUT/deployment.txt" 2>&1
echo "deployment bench: exit $?"
cp /tmp/zoo/results/*.json "$OUT/" 2>/dev/null
sed -n '/^deployment:/,$p' "$OUT/deployment.txt"
