"""The regression gate's judging rules (benchmarks/ratio_gate.py), without timing anything."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ratio_gate  # noqa: E402


@pytest.fixture
def baseline_file(tmp_path):
    checks = [ratio_gate.Check("lw/b1/onnx-cpu:others", "backend", 0.8, peers=["openvino-fp32", "torch-eager"]),
              ratio_gate.Check("harness/overhead", "overhead", 1.01)]
    return ratio_gate.write_baseline(checks, tmp_path / "baseline.json")


def test_threshold_is_the_ratio_plus_its_kinds_margin(baseline_file):
    doc = json.loads(baseline_file.read_text())
    entry = doc["checks"]["lw/b1/onnx-cpu:others"]
    assert entry["max"] == pytest.approx(0.8 * (1 + ratio_gate.MARGINS["backend"]), abs=1e-4)
    assert entry["peers"] == ["openvino-fp32", "torch-eager"]
    assert doc["checks"]["harness/overhead"]["max"] == pytest.approx(1.01 * (1 + ratio_gate.MARGINS["overhead"]),
                                                                     abs=1e-4)
    assert doc["command"] == ratio_gate.UPDATE_COMMAND and doc["margins"] == ratio_gate.MARGINS


def test_a_slowdown_past_the_margin_fails_and_one_within_passes(baseline_file):
    base = ratio_gate.load_baseline(baseline_file)
    peers = ["torch-eager", "openvino-fp32"]
    slowed = ratio_gate.judge("lw/b1/onnx-cpu:others", "backend", 0.8 * 1.30, baseline=base, peers=peers)
    assert slowed.verdict == "FAIL" and "+30%" in slowed.line()
    within = ratio_gate.judge("lw/b1/onnx-cpu:others", "backend", 0.8 * 1.10, baseline=base, peers=peers)
    assert within.verdict == "pass"


def test_the_pair_margin_leaves_room_for_noise_above_a_30_percent_slowdown(tmp_path):
    """A same-runtime pair (onnx-cpu:onnx-optimized) moves by the full slowdown and by little else (-3% to +4%
    run to run, benchmarks/SCHEDULE.md): its threshold must sit well below +30% and well above that spread."""
    path = ratio_gate.write_baseline([ratio_gate.Check("lw/b1/onnx-cpu:onnx-optimized", "pair", 1.0)],
                                     tmp_path / "baseline.json")
    base = ratio_gate.load_baseline(path)
    assert ratio_gate.judge("lw/b1/onnx-cpu:onnx-optimized", "pair", 1.30 / 1.10, baseline=base).verdict == "FAIL"
    assert ratio_gate.judge("lw/b1/onnx-cpu:onnx-optimized", "pair", 1.10, baseline=base).verdict == "pass"


def test_a_ratio_over_different_peers_is_not_judged_against_the_old_one(baseline_file):
    base = ratio_gate.load_baseline(baseline_file)
    c = ratio_gate.judge("lw/b1/onnx-cpu:others", "backend", 5.0, baseline=base, peers=["torch-eager", "onnx-int8"])
    assert c.verdict == "skip"
    assert "missing here: openvino-fp32" in c.line() and "new here: onnx-int8" in c.line()
    assert ratio_gate.UPDATE_COMMAND in c.line()


def test_a_ratio_without_baseline_is_new_and_not_gated(baseline_file):
    c = ratio_gate.judge("lw/b1/my-plugin:others", "backend", 9.9, baseline=ratio_gate.load_baseline(baseline_file))
    assert c.verdict == "new" and "no baseline" in c.line()


def test_updating_keeps_entries_not_measured_this_time(baseline_file):
    ratio_gate.write_baseline([ratio_gate.Check("pipeline/per-frame", "pipeline", 0.12)], baseline_file)
    names = set(ratio_gate.load_baseline(baseline_file)["checks"])
    assert names == {"lw/b1/onnx-cpu:others", "harness/overhead", "pipeline/per-frame"}


def test_the_committed_baseline_gates_every_kind_with_its_margin():
    doc = ratio_gate.load_baseline()
    assert doc["checks"], "benchmarks/baseline.json is missing: " + ratio_gate.UPDATE_COMMAND
    kinds = {e["kind"] for e in doc["checks"].values()}
    assert kinds == set(ratio_gate.MARGINS)
    for name, e in doc["checks"].items():
        assert e["max"] == pytest.approx(e["baseline"] * (1 + ratio_gate.MARGINS[e["kind"]]), abs=2e-4), name
