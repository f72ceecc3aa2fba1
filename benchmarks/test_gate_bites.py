"""The gate is proven to bite: with the head's onnx-cpu made 40% slower by a throwaway plugin it fails,
naming onnx-cpu; the real comparison (``.ci/run``'s gate run, every backend) passes.

Runs the gate in a subprocess on lightweight with onnx-cpu and torch-eager only (the slowed plugin replaces
onnx-cpu in the head's workers alone; the base commit runs the real one). Marked ``gate_selftest``:
`.ci/run` runs it after the gate.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gate_selftest
HERE = Path(__file__).parent


def run_gate(**env):
    cmd = [sys.executable, "-m", "pytest", str(HERE / "test_gate.py"), "-m", "gate", "-k",
           "backends_against_base and lightweight", "--gate-backends", "onnx-cpu,torch-eager", "-q",
           "-p", "no:cacheprovider", "--benchmark-disable"]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=900, cwd=HERE.parent)


def test_gate_fails_on_a_40_percent_slower_backend():
    slowed = run_gate(SIGNFLOW_ZOO_GATE_HEAD_ENV="SIGNFLOW_ZOO_BLOCK_PLUGINS=onnx_cpu;SIGNFLOW_ZOO_PLUGINS=slowed_backend")
    assert slowed.returncode == 1, slowed.stdout[-3000:] + slowed.stderr[-2000:]
    failed = [line.split()[1].rstrip(":") for line in slowed.stdout.splitlines() if line.startswith("[FAIL] ")]
    # the slowed backend fails at both batch sizes, and nothing else does
    assert "lightweight/b1/onnx-cpu" in failed and "lightweight/b8/onnx-cpu" in failed, slowed.stdout[-3000:]
    assert all(name.endswith("/onnx-cpu") for name in failed), failed
