"""Benchmark suites generated from the registries: every zoo preset x every backend available here.

Modes (``--bench-mode``, or ``SIGNFLOW_ZOO_BENCH_MODE``): ``short`` (CI: lightweight and baseline, batch
1 and 8) and ``full`` (every preset, batch 1 and 32). A new preset in ``zoo.toml`` or a newly installed
backend plugin is benchmarked without editing a suite. Results: ``--benchmark-json PATH`` (CI writes
``.ci-results/benchmarks.json``); a compact summary table and the gate's verdicts are printed at the end.
"""

from __future__ import annotations

import os

import pytest

import ratio_gate

SHORT_PRESETS = ("lightweight", "baseline")
BATCHES = {"short": (1, 8), "full": (1, 32)}
THREADS = os.cpu_count() or 1


def pytest_addoption(parser):
    group = parser.getgroup("signflow-zoo benchmarks")
    group.addoption("--bench-mode", choices=("short", "full"), default=os.environ.get("SIGNFLOW_ZOO_BENCH_MODE", "short"),
                    help="short: lightweight and baseline, batch 1 and 8 (CI); full: every preset, batch 1 and 32")
    group.addoption("--gate-base", default=None, metavar="REV",
                    help="the commit the gate compares the working tree with (default: benchmarks/GATE_BASE, or "
                         "$SIGNFLOW_ZOO_GATE_BASE)")
    group.addoption("--gate-backends", default=None, metavar="A,B",
                    help="gate only these backends (default: every backend available here)")
    group.addoption("--gate-min-time", type=float, default=1.5,
                    help="seconds of timed calls per backend, version and batch size in the gate (default 1.5)")


def pytest_configure(config):
    config.addinivalue_line("markers", "gate: the ratio regression gate (python -m pytest benchmarks -m gate)")
    config.addinivalue_line("markers", "gate_selftest: proves the gate fails on a deliberately slowed backend")
    config._gate_checks = []


def presets(config) -> list[str]:
    from signflow_zoo.model.zoo import list_presets

    names = list_presets()
    return names if config.getoption("bench_mode") == "full" else [p for p in names if p in SHORT_PRESETS]


def available_backends() -> list[str]:
    from signflow_zoo.plugins import get_registry

    reg = get_registry()
    out = []
    for name, be in reg.runners.items():
        try:
            ok = be.cls.availability().ok
        except Exception:  # noqa: BLE001 - a broken plugin is not benchmarked (``backends`` lists it)
            ok = False
        if ok:
            out.append(name)
    return out


def pytest_generate_tests(metafunc):
    mode = metafunc.config.getoption("bench_mode")
    if "preset" in metafunc.fixturenames:
        metafunc.parametrize("preset", presets(metafunc.config))
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", available_backends())
    if "batch" in metafunc.fixturenames:
        metafunc.parametrize("batch", BATCHES[mode])


@pytest.fixture(scope="session")
def artifacts_by_preset(tmp_path_factory):
    """Each preset's artifacts, built on first use (untrained weights: inference costs the same)."""
    cache = {}

    def get(preset: str):
        if preset not in cache:
            cache[preset] = build_artifacts(preset, tmp_path_factory.mktemp(f"bench-{preset}"))
        return cache[preset]

    return get


def build_artifacts(preset: str, folder, num_classes: int = 20):
    from signflow_zoo.testing import bench_artifacts

    return bench_artifacts(preset, folder, num_classes=num_classes)


def ensure_kind(arts, kind: str):
    """Build the artifact kind a backend consumes (plugin kinds included) before it is prepared."""
    from signflow_zoo.api import ensure_artifact
    from signflow_zoo.plugins import get_registry
    from signflow_zoo.testing import RandomCalibration

    # untrained weights, no data set: calibrated kinds (static int8) get the conformance kit's random clips
    return ensure_artifact(arts, kind, get_registry(), home=arts.workdir, calibration=RandomCalibration(),
                           log=lambda msg: None)


@pytest.fixture(scope="session")
def lightweight_artifacts(artifacts_by_preset):
    return artifacts_by_preset("lightweight")


@pytest.fixture
def gate(request):
    """Record a judged :class:`ratio_gate.Check` for the summary: ``gate(check)`` -> ``check``."""

    def record(check: ratio_gate.Check) -> ratio_gate.Check:
        request.config._gate_checks.append(check)
        return check

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    checks = getattr(config, "_gate_checks", [])
    bench = getattr(config, "_benchmarksession", None)
    rows = []
    for b in getattr(bench, "benchmarks", []) or []:
        st = getattr(b, "stats", None)
        if st is not None and getattr(st, "median", None):
            rows.append((b.name, st.median * 1e3, st.iqr * 1e3, st.rounds))
    if rows:
        terminalreporter.section("benchmark summary (median ms per call)")
        width = max(len(r[0]) for r in rows)
        for name, med, iqr, rounds in rows:
            terminalreporter.write_line(f"{name:<{width}}  {med:9.3f}  (IQR {iqr:.3f}, {rounds} rounds)")
    if checks:
        terminalreporter.section("gate: the working tree against its base commit, measured in this run")
        for c in checks:
            terminalreporter.write_line(f"[{c.verdict:>4}] {c.line()}" + (f"  ({c.detail})" if c.detail else ""))
