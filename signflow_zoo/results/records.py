"""Typed bench results and their versioned JSON schema.

One file per ``bench`` invocation (:class:`BenchDocument`), one :class:`BenchRecord` per preset x
backend. Schema ``signflow-zoo/bench/2``; files of schema 1 are read and upgraded
(:meth:`BenchDocument.from_dict`), so ``report`` and ``sync`` keep working on older results.

``status`` of a record: ``ok``; ``unavailable`` (cannot run here, with the reason); ``broken`` (the
plugin itself failed, e.g. its availability check raised); ``failed`` (an error, with its message);
``parity-failed`` (measured, but outside its precision's tolerance); ``crashed`` (the backend's worker
process died: segfault, abort, out of memory) and ``timeout`` (it stopped answering within ``--timeout``).
A failure at one batch size only is kept in ``latency_errors`` and loses nothing else.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from signflow_zoo.results.stability import Stability
from signflow_zoo.results.latency import LatencyStats

SCHEMA = "signflow-zoo/bench/2"
SCHEMA_V1 = "signflow-zoo/bench/1"
READABLE_SCHEMAS = (SCHEMA_V1, SCHEMA)
STATUSES = ("ok", "unavailable", "broken", "failed", "parity-failed", "crashed", "timeout")


@dataclass
class TimingCheck:
    """The same backend timed alone and in the schedule (``bench --check-timing``)."""

    solo_p50_ms: float
    scheduled_p50_ms: float
    p50_ratio: float  # scheduled / solo
    solo_p99_ms: float
    scheduled_p99_ms: float
    p99_ratio: float


@dataclass
class Speedup:
    """reference p50 / this p50, with a bootstrap 95% interval; ``distinguishable`` is False when the
    interval contains 1 (the two backends cannot be told apart by this run)."""

    reference: str
    ratio: float
    ci: tuple[float, float]
    distinguishable: bool


@dataclass
class Accuracy:
    top1: float
    top1_ci: tuple[float, float]  # Wilson 95% interval
    top5: float
    macro_f1: float
    agreement_top1: float  # same top-1 as the PyTorch fp32 reference
    n: int  # held-out clips
    batch: int | None = None  # clips per call it ran at (smaller than the bench's 64 when larger batches failed)
    note: str = ""  # why it ran at a smaller batch
    # signers are the unit of generalization: top-1 of each held-out signer, the worst of them, and a 95% top-1
    # interval bootstrapped over signers (wider than the Wilson one when signers differ)
    per_signer: dict[str, dict[str, Any]] = field(default_factory=dict)  # signer -> {"top1", "n"}
    worst_signer_top1: float | None = None
    worst_signer: str = ""
    top1_signer_ci: tuple[float, float] | None = None


@dataclass
class Memory:
    baseline_mb: float
    peak_mb: float
    added_mb: float
    rss_mb: float
    what: str
    device_added_mb: float | None = None


def _latency_from(d: dict[str, Any], batch: int) -> LatencyStats:
    known = {f.name for f in fields(LatencyStats)}
    kw = {k: v for k, v in d.items() if k in known}
    kw.setdefault("batch", batch)
    kw.setdefault("blocks", 1)
    p50 = kw.get("p50_ms", float("nan"))
    kw["p50_ci_ms"] = tuple(kw.get("p50_ci_ms") or (p50, p50))
    kw.setdefault("noisy", False)
    kw.setdefault("noisy_why", "flagged by the schema-1 rule (CV > 0.25 or p99 > 4 x p50)" if kw["noisy"] else "")
    kw.setdefault("valid", not d.get("short", False))
    for k in ("p90_ms", "p99_ms", "mean_ms", "stdev_ms", "min_ms", "max_ms", "cv", "throughput_seq_s", "total_s"):
        kw.setdefault(k, float("nan"))
    kw.setdefault("iterations", 0)
    return LatencyStats(**kw)


@dataclass
class BenchRecord:
    result_id: str
    preset: str
    backend: str
    status: str = "ok"
    reason: str = ""
    plugin: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    latency: dict[int, LatencyStats] = field(default_factory=dict)
    latency_errors: dict[int, str] = field(default_factory=dict)
    timing_check: dict[int, TimingCheck] = field(default_factory=dict)
    speedup: dict[int, Speedup] = field(default_factory=dict)
    # p50 / the mean ms of the run-stability reference workload (:mod:`signflow_zoo.bench.stability`: a small ONNX Runtime
    # graph at the bench's thread count) over its readings during this preset, from the one before it to the one
    # after it, rounds included: comparable across runs on a drifting machine. Until 2026-12 it was p50 / the
    # mean of the two matmul ``drift`` readings around the preset, which a slow machine state does not move.
    normalized_p50: dict[int, float] = field(default_factory=dict)
    roofline: dict[int, dict[str, float | None]] = field(default_factory=dict)
    # per-call ms of every timed block, per batch size: what `report --compare` resamples across runs
    samples: dict[int, list[list[float]]] = field(default_factory=dict)
    accuracy: Accuracy | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    memory: Memory | None = None
    stream: dict[str, Any] = field(default_factory=dict)
    # deployment scenarios (bench --scenarios; docs/deployment.md): each empty when not run
    capacity: dict[str, Any] = field(default_factory=dict)  # live streams served at a deadline
    server: dict[str, Any] = field(default_factory=dict)  # Poisson requests: highest rate with p99 under a bound
    offline: dict[str, Any] = field(default_factory=dict)  # best throughput over batch sizes
    cold_start: dict[str, Any] = field(default_factory=dict)  # fresh process to first prediction, median of runs
    # the precision and device the runner really ran, read back from its session or compiled model
    effective_precision: dict[str, Any] = field(default_factory=dict)
    describe: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    traceback: str = ""

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("latency", "latency_errors", "timing_check", "speedup", "normalized_p50", "roofline", "samples"):
            d[key] = {str(b): v for b, v in d[key].items()}
        for lat in d["latency"].values():
            lat["p50_ci_ms"] = list(lat["p50_ci_ms"])
            lat["n"] = lat["iterations"]  # the call count, under the name comparisons read
        for sp in d["speedup"].values():
            sp["ci"] = list(sp["ci"])
        if d["accuracy"]:
            d["accuracy"]["top1_ci"] = list(d["accuracy"]["top1_ci"])
            if d["accuracy"]["top1_signer_ci"] is not None:
                d["accuracy"]["top1_signer_ci"] = list(d["accuracy"]["top1_signer_ci"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchRecord":
        """A record of schema 2, or of schema 1 (``memory_mb``, latency without intervals) upgraded."""
        acc = d.get("accuracy") or None
        if acc:
            top1 = float(acc.get("top1", float("nan")))
            acc = Accuracy(top1=top1, top1_ci=tuple(acc.get("top1_ci") or (top1, top1)), top5=acc.get("top5", float("nan")),
                           macro_f1=acc.get("macro_f1", float("nan")), agreement_top1=acc.get("agreement_top1", float("nan")),
                           n=int(acc.get("n") or d.get("params", {}).get("test_size") or 0),
                           batch=acc.get("batch"), note=str(acc.get("note") or ""),
                           per_signer={str(k): dict(v) for k, v in (acc.get("per_signer") or {}).items()
                                       if isinstance(v, dict)},
                           worst_signer_top1=acc.get("worst_signer_top1"), worst_signer=str(acc.get("worst_signer") or ""),
                           top1_signer_ci=tuple(acc["top1_signer_ci"]) if acc.get("top1_signer_ci") else None)
        mem = d.get("memory")
        if mem:
            mem = Memory(**{f.name: mem.get(f.name) for f in fields(Memory) if f.name in mem})
        elif d.get("memory_mb") is not None:  # schema 1: RSS growth of the shared process, a lower bound
            v = float(d["memory_mb"])
            mem = Memory(baseline_mb=float("nan"), peak_mb=float("nan"), added_mb=v, rss_mb=float("nan"),
                         what="schema 1: resident memory growth of the shared bench process (a lower bound)")
        return cls(
            result_id=d["result_id"], preset=d["preset"], backend=d["backend"], status=d.get("status", "ok"),
            reason=d.get("reason", ""), plugin=d.get("plugin", ""), params=dict(d.get("params") or {}),
            latency={int(b): _latency_from(v, int(b)) for b, v in (d.get("latency") or {}).items()},
            latency_errors={int(b): str(v) for b, v in (d.get("latency_errors") or {}).items()},
            timing_check={int(b): TimingCheck(**v) for b, v in (d.get("timing_check") or {}).items()},
            speedup={int(b): Speedup(v["reference"], v["ratio"], tuple(v["ci"]), v["distinguishable"])
                     for b, v in (d.get("speedup") or {}).items()},
            normalized_p50={int(b): float(v) for b, v in (d.get("normalized_p50") or {}).items()},
            roofline={int(b): dict(v) for b, v in (d.get("roofline") or {}).items()},
            samples={int(b): [[float(x) for x in block] for block in v] for b, v in (d.get("samples") or {}).items()},
            accuracy=acc, parity=dict(d.get("parity") or {}), memory=mem, stream=dict(d.get("stream") or {}),
            capacity=dict(d.get("capacity") or {}), server=dict(d.get("server") or {}),
            offline=dict(d.get("offline") or {}), cold_start=dict(d.get("cold_start") or {}),
            effective_precision=dict(d.get("effective_precision") or {}),
            describe=dict(d.get("describe") or {}), training=dict(d.get("training") or {}),
            calibration=dict(d.get("calibration") or {}), run_id=d.get("run_id"), traceback=d.get("traceback", ""),
        )


def _positive_ms(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


@dataclass
class Drift:
    """Readings of the fixed reference workload (:func:`signflow_zoo.bench.timing.reference_workload`)."""

    readings: list[dict[str, Any]] = field(default_factory=list)  # {"at": "start" | "after <preset>" | "end", "ms", "time"}

    def _ms(self) -> list[float | None]:
        """Each reading's ms; None for one that is not a positive finite number (a 0 ms reading divides nothing)."""
        return [_positive_ms(r.get("ms")) if isinstance(r, dict) else None for r in self.readings]

    @property
    def ratio(self) -> float | None:
        """Last reading / first: > 1 means the machine got slower during the bench (None without two usable ones)."""
        ms = self._ms()
        if len(ms) < 2 or ms[0] is None or ms[-1] is None:
            return None
        return ms[-1] / ms[0]

    @property
    def spread(self) -> float | None:
        """Slowest reading / fastest, of the usable ones."""
        ms = [v for v in self._ms() if v is not None]
        if len(ms) < 2:
            return None
        return max(ms) / min(ms)

    def to_dict(self) -> dict[str, Any]:
        return {"readings": list(self.readings), "ratio": self.ratio, "spread": self.spread}


@dataclass
class BenchDocument:
    invocation_id: str
    created: str
    environment: dict[str, Any]
    config: dict[str, Any]
    records: list[BenchRecord] = field(default_factory=list)
    drift: Drift = field(default_factory=Drift)
    # run stability (:mod:`signflow_zoo.bench.stability`); a file written before it existed reads as status "unknown"
    stability: Stability = field(default_factory=Stability)
    ceilings: dict[str, Any] = field(default_factory=dict)  # this machine's matmul GFLOP/s per precision
    tracking: dict[str, Any] = field(default_factory=dict)
    result_file: str = ""
    outputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "invocation_id": self.invocation_id, "created": self.created,
                "environment": self.environment, "config": self.config,
                "records": [r.to_dict() for r in self.records], "drift": self.drift.to_dict(),
                "stability": self.stability.to_dict(), "ceilings": dict(self.ceilings),
                "tracking": self.tracking, "result_file": self.result_file, "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchDocument":
        schema = d.get("schema")
        if schema not in READABLE_SCHEMAS:
            raise ValueError(f"unknown result schema {schema!r}; this signflow-zoo reads {', '.join(READABLE_SCHEMAS)}")
        for key in ("invocation_id", "created", "records"):
            if key not in d:
                raise ValueError(f"result file has no {key!r}")
        drift = Drift(list((d.get("drift") or {}).get("readings") or []))
        return cls(invocation_id=str(d["invocation_id"]), created=str(d["created"]),
                   environment=dict(d.get("environment") or {}), config=dict(d.get("config") or {}),
                   records=[BenchRecord.from_dict(r) for r in d["records"]], drift=drift,
                   stability=Stability.from_dict(d.get("stability")),
                   ceilings=dict(d.get("ceilings") or {}),
                   tracking=dict(d.get("tracking") or {}), result_file=str(d.get("result_file", "")),
                   outputs=list(d.get("outputs") or []))
