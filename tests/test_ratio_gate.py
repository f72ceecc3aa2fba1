"""The regression gate's rules and its base version (benchmarks/ratio_gate.py, gate_versions.py), without timing."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import gate_versions  # noqa: E402
import ratio_gate  # noqa: E402

from signflow_zoo.results.latency import bootstrap_ratio_ci  # noqa: E402


def _rounds(rng, scale, drift, n_rounds=15, calls=40):
    """Head and base blocks of one schedule: each round's machine speed (``drift``) hits both alike."""
    head, base = [], []
    for r in range(n_rounds):
        speed = drift[r]
        head.append(list(rng.lognormal(np.log(2.0 * scale * speed), 0.08, calls)))
        base.append(list(rng.lognormal(np.log(2.0 * speed), 0.08, calls)))
    return head, base


@pytest.mark.parametrize("scale,verdict", [(1.0, "pass"), (1.40, "FAIL"), (0.7, "pass"), (1.05, "pass")])
def test_a_40_percent_slower_head_fails_and_an_unchanged_one_passes(scale, verdict):
    rng = np.random.default_rng(0)
    head, base = _rounds(rng, scale, np.ones(15))
    ratio, lo, hi = ratio_gate.paired_ratio(head, base)
    check = ratio_gate.Check("lw/b1/onnx-cpu", "backend", ratio, lo, hi)
    assert check.verdict == verdict, check.line()
    assert lo <= ratio <= hi and ratio == pytest.approx(scale, rel=0.03)


def test_pairing_by_round_cancels_machine_drift_that_unpaired_resampling_cannot():
    """The machine's speed moves by 2x between rounds (a hog, a slow state): compared block by block within
    each round the 40% slowdown still stands out; compared as two pooled distributions it is lost in the drift."""
    rng = np.random.default_rng(1)
    drift = rng.uniform(0.5, 2.0, 15)
    head, base = _rounds(rng, 1.4, drift)
    ratio, lo, hi = ratio_gate.paired_ratio(head, base)
    assert ratio_gate.Check("x", "backend", ratio, lo, hi).verdict == "FAIL" and hi - lo < 0.1
    _, ulo, uhi = bootstrap_ratio_ci(head, base)
    assert ratio_gate.Check("x", "backend", 1.4, ulo, uhi).verdict == "pass" and uhi - ulo > 0.5
    same_head, same_base = _rounds(rng, 1.0, drift)
    r, lo, hi = ratio_gate.paired_ratio(same_head, same_base)
    assert lo <= 1.0 <= hi and ratio_gate.Check("x", "backend", r, lo, hi).verdict == "pass"


def test_only_an_interval_wholly_above_the_margin_fails():
    limit = 1 + ratio_gate.MARGINS["backend"]
    # point estimate past the margin, but the run cannot tell it from noise: not a failure
    assert ratio_gate.Check("x", "backend", limit + 0.05, limit - 0.05, limit + 0.2).verdict == "pass"
    assert ratio_gate.Check("x", "backend", limit + 0.1, limit + 0.01, limit + 0.2).verdict == "FAIL"
    assert "fails when the interval lies above" in ratio_gate.Check("x", "backend", 1.0, 0.9, 1.1).line()


def test_overhead_is_held_to_a_fixed_ceiling_and_a_broken_measurement_fails():
    assert ratio_gate.Check("h", "overhead", 1.0 + ratio_gate.MARGINS["overhead"] + 0.01).verdict == "FAIL"
    assert ratio_gate.Check("h", "overhead", 1.01).verdict == "pass"
    assert ratio_gate.Check("h", "backend", float("nan"), float("nan"), float("nan")).verdict == "FAIL"


def test_a_backend_the_base_cannot_run_is_reported_not_gated():
    c = ratio_gate.Check("lw/new-plugin", "backend", float("nan"), note="the base commit cannot build its artifact")
    assert c.verdict == "skip" and "not gated" in c.line()


def test_the_re_measurement_keeps_the_measurement_that_speaks_for_the_change():
    first = ratio_gate.Check("x", "backend", 1.5, 1.4, 1.6)
    second = ratio_gate.Check("x", "backend", 1.02, 0.97, 1.08)
    assert ratio_gate.lower(first, second) is second and ratio_gate.lower(second, first) is second


def test_the_base_commit_is_exported_and_imports_as_its_own_version(tmp_path):
    """The base's package runs from its exported tree, not from the working tree or its editable install."""
    base = gate_versions.materialize_base("HEAD", tmp_path / "base")
    assert (base.root / "signflow_zoo" / "__init__.py").is_file() and len(base.rev) == 12
    out = subprocess.run([sys.executable, "-c", "import signflow_zoo; print(signflow_zoo.__file__)"],
                         env={"PYTHONPATH": base.pythonpath(), "PATH": ""}, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve().is_relative_to(base.root.resolve())


def test_an_unknown_base_commit_is_a_clear_error(tmp_path):
    with pytest.raises(gate_versions.GateSetupError, match="not in this repository.*--gate-base"):
        gate_versions.materialize_base("0" * 40, tmp_path)


def test_the_committed_base_names_a_commit_of_this_history():
    rev = gate_versions.base_rev()
    res = subprocess.run(["git", "merge-base", "--is-ancestor", rev, "HEAD"], cwd=BENCH, capture_output=True)
    assert res.returncode == 0, f"benchmarks/GATE_BASE names {rev}, which is not an ancestor of HEAD"
