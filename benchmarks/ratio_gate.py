"""The performance regression gate: ratios measured in one run, held against committed thresholds.

Absolute times on shared machines drift (the same ONNX session measured 0.86 ms and 0.56 ms p50 a minute
apart), so the gate never compares a time with last week's time. It compares *ratios of two things
measured in the same run, interleaved*, which drift moves together: a backend's p50 over the geometric
mean of the other backends' p50s,
onnx-optimized over onnx-cpu and back (same runtime, same graph: the tightest ratio), the harness's timing loop over a bare runtime loop, the streaming
pipeline's per-frame cost over a fixed reference workload. Each ratio has a threshold in
``benchmarks/baseline.json``; a ratio past its threshold fails ``python -m pytest benchmarks -m gate``.

Update the baseline (after a deliberate change, on the machine kind CI uses)::

    python -m pytest benchmarks -m gate --update-baseline

which writes each measured ratio and its threshold (ratio x (1 + margin of its kind), margins below,
chosen from the run-to-run spread measured on this machine kind and recorded in benchmarks/SCHEDULE.md).
A ratio without a baseline entry (a new plugin or preset) is reported as ``new`` and does not fail.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BASELINE = Path(__file__).with_name("baseline.json")
UPDATE_COMMAND = "python -m pytest benchmarks -m gate --update-baseline"
# threshold = measured ratio x (1 + margin); a 30% slowdown must fail, run-to-run spread must not
# (measured spread per kind and the runs behind it: benchmarks/SCHEDULE.md, "The gate's margins")
MARGINS = {"backend": 0.25, "pair": 0.15, "reference": 0.75, "overhead": 0.06, "pipeline": 0.25}


@dataclass
class Check:
    name: str  # e.g. "lightweight/b1/onnx-cpu:torch-eager"
    kind: str  # a key of MARGINS
    value: float
    baseline: float | None = None
    threshold: float | None = None
    detail: str = ""
    peers: list[str] | None = None  # for X:others, the backends whose geometric mean is the denominator
    stale: str = ""  # why a baseline entry exists but is not comparable (a different set of peers)

    @property
    def verdict(self) -> str:
        if self.stale:
            return "skip"
        if self.threshold is None:
            return "new"
        return "FAIL" if self.value > self.threshold else "pass"

    def line(self) -> str:
        if self.stale:
            return f"{self.name}: {self.value:.3f} (not gated: {self.stale}; {UPDATE_COMMAND} re-baselines it)"
        if self.threshold is None:
            return f"{self.name}: {self.value:.3f} (no baseline: not gated; {UPDATE_COMMAND} adds it)"
        return (f"{self.name}: {self.value:.3f} vs threshold {self.threshold:.3f} (baseline {self.baseline:.3f}, "
                f"{100 * (self.value / self.baseline - 1):+.0f}%)")


def load_baseline(path: Path = BASELINE) -> dict:
    if not path.is_file():
        return {"checks": {}}
    return json.loads(path.read_text())


def judge(name: str, kind: str, value: float, detail: str = "", baseline: dict | None = None,
          peers: list[str] | None = None) -> Check:
    entry = (baseline or load_baseline()).get("checks", {}).get(name)
    if entry is None:
        return Check(name, kind, value, detail=detail, peers=peers)
    if peers is not None and entry.get("peers") is not None and sorted(entry["peers"]) != sorted(peers):
        gone, added = sorted(set(entry["peers"]) - set(peers)), sorted(set(peers) - set(entry["peers"]))
        why = "its peers differ from the baseline's" + (f" (missing here: {', '.join(gone)})" if gone else "") + \
            (f" (new here: {', '.join(added)})" if added else "")
        return Check(name, kind, value, detail=detail, peers=peers, stale=why)
    return Check(name, kind, value, float(entry["baseline"]), float(entry["max"]), detail, peers)


def write_baseline(checks: list[Check], path: Path = BASELINE) -> Path:
    """Merge measured ratios into the baseline file (entries not measured this time are kept)."""
    doc = load_baseline(path)
    entries = doc.setdefault("checks", {})
    for c in checks:
        entries[c.name] = {"baseline": round(c.value, 4), "max": round(c.value * (1 + MARGINS[c.kind]), 4),
                           "kind": c.kind}
        if c.peers is not None:
            entries[c.name]["peers"] = sorted(c.peers)
    doc.update({
        "measured": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} ({os.cpu_count()} cores, "
        f"{_cpu_model()})", "command": UPDATE_COMMAND, "margins": MARGINS,
        "rule": "a check fails when its ratio, measured in one interleaved run, exceeds max",
    })
    doc["checks"] = dict(sorted(entries.items()))
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def as_rows(checks: list[Check]) -> list[dict]:
    return [{**asdict(c), "verdict": c.verdict} for c in checks]
