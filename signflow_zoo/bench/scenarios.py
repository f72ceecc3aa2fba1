"""What the harness measures, one small function per scenario, over typed records.

Each scenario drives backend workers (:mod:`signflow_zoo.bench.worker`) and fills
:class:`~signflow_zoo.results.records.BenchRecord` fields. Failures are recorded where they happen: a worker
that dies or hangs ends that backend (``crashed`` / ``timeout``); an error at one batch size costs only
that batch size; every other backend goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from signflow_zoo.common.errors import BackendError
from signflow_zoo.model.metrics import classification_report, per_signer_accuracy, wilson_interval
from signflow_zoo.backends.parity import compare
from signflow_zoo.results.records import Accuracy, BenchRecord, Memory, Speedup, TimingCheck
from signflow_zoo.bench.schedule import Outcome, expected_calls, run_schedule, run_solo, stints_between_rounds, warm
from signflow_zoo.bench.timing import TimingConfig
from signflow_zoo.results.latency import bootstrap_ratio_ci, summarize
from signflow_zoo.bench.worker import BackendWorker, WorkerError, WorkerFailed

ACCURACY_BATCH = 64


@dataclass
class Lane:
    """One backend under test: its record and, while it can still run, its worker."""

    record: BenchRecord
    worker: BackendWorker | None
    precision: str = "fp32"
    tolerance: Any = None  # a plugin's own parity tolerance, for a precision outside the built-in table

    @property
    def live(self) -> bool:
        return self.worker is not None and self.record.status in ("ok", "parity-failed")

    @property
    def live_worker(self) -> BackendWorker:
        """The worker of a live lane (the scenarios below are run on live lanes only)."""
        assert self.worker is not None, f"{self.record.backend}: no worker"
        return self.worker

    def fail(self, exc: BaseException, during: str) -> None:
        """Record why this backend stopped, and stop its worker."""
        if isinstance(exc, WorkerFailed):
            self.record.fail(exc.status, str(exc))
        elif isinstance(exc, WorkerError) and exc.kind == "BackendUnavailable":
            self.record.fail("unavailable", str(exc).split(": ", 1)[-1])
        else:
            self.record.fail("failed", f"{during}: {exc}")
            self.record.traceback = getattr(exc, "trace", "")
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def prepare(lane: Lane, log: Callable[[str], None]) -> None:
    try:
        lane.record.describe = dict(lane.live_worker.call("prepare"))
        lane.record.params["provider"] = lane.record.describe.get("provider", "")
    except BackendError as exc:
        lane.fail(exc, "prepare")
        log(f"{lane.record.preset}/{lane.record.backend}: {lane.record.status}: {lane.record.reason}")
        return
    effective(lane, log)


def effective(lane: Lane, log: Callable[[str], None]) -> None:
    """The precision and device the prepared runner really runs (``Runner.effective_precision``, read back in its
    worker), beside the declared precision: a mismatch is recorded and logged, never a failure."""
    where = f"{lane.record.preset}/{lane.record.backend}"
    try:
        got = dict(lane.live_worker.call("effective"))
    except WorkerFailed as exc:  # the worker died or hung: that ends the backend, as anywhere else
        lane.fail(exc, "effective precision")
        log(f"{where}: {lane.record.status}: {lane.record.reason}")
        return
    except WorkerError as exc:
        log(f"{where}: note: effective precision not read back ({exc})")
        return
    ran = str(got.get("precision") or "")
    lane.record.effective_precision = {**got, "declared": lane.precision,
                                       "mismatch": bool(ran and ran != lane.precision)}
    if lane.record.effective_precision["mismatch"]:
        log(f"{where}: declared {lane.precision} but ran {ran} ({got.get('how', '')})")
    elif not ran:
        log(f"{where}: note: effective precision not read back: {got.get('how', '')}")


def run_at_largest_batch(worker: BackendWorker, pairs: list[tuple[np.ndarray, np.ndarray]], start: int,
                         budget: float = 0.0) -> tuple[list[Any], int, tuple[int, WorkerError] | None]:
    """Run ``pairs`` (each cut into batches of at most ``start`` sequences) at the largest batch that works.

    An error of the runner (a :class:`WorkerError`, e.g. out of memory at this batch size) halves the batch and
    tries again, down to 1: a backend that fails only at larger batches keeps its parity and accuracy. A
    :class:`WorkerFailed` (the worker died or hung) and an error at batch 1 are raised. Returns the outputs (one
    per batch run, in order), the largest batch they ran at, and the first batch that failed with its error (``None``
    when the first try worked).
    """
    size = max(1, min(int(start), max(len(x) for x, _ in pairs)))  # the largest batch actually run
    first: tuple[int, WorkerError] | None = None
    while True:
        chunks = [(x[i:i + size], m[i:i + size]) for x, m in pairs for i in range(0, len(x), size)]
        try:
            outs: list[Any] = []
            for group in _message_groups(chunks):  # a big (memory-mapped) test set never travels whole
                outs.extend(worker.call("run_many", [(np.ascontiguousarray(x), np.ascontiguousarray(m))
                                                     for x, m in group], budget=budget))
            return outs, size, first
        except WorkerError as exc:
            if size == 1 or exc.kind == "BackendUnavailable":
                raise
            first = first or (size, exc)
            size = max(1, size // 2)


MESSAGE_BYTES = 64 << 20  # at most this much input data in one request to a worker


def _message_groups(chunks: list[tuple[np.ndarray, np.ndarray]]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """``chunks`` in consecutive groups of at most :data:`MESSAGE_BYTES` of input each (one chunk at least)."""
    groups: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    held = 0
    for x, m in chunks:
        n = x.nbytes + m.nbytes
        if groups[-1] and held + n > MESSAGE_BYTES:
            groups.append([])
            held = 0
        groups[-1].append((x, m))
        held += n
    return groups


def _fallback_note(what: str, used: int, failed: tuple[int, WorkerError] | None) -> str:
    if failed is None:
        return ""
    return f"{what} ran at batch {used}: batch {failed[0]} failed ({failed[1]})"


def parity(lane: Lane, inputs: list[tuple[np.ndarray, np.ndarray]], refs: list[np.ndarray],
           log: Callable[[str], None]) -> None:
    """Logits on the same inputs as the PyTorch fp32 reference, judged by the backend's precision.

    Run at the largest batch that works (:func:`run_at_largest_batch`); ``parity["batch"]`` records it, and
    ``parity["note"]`` why it is smaller than the inputs' batches."""
    start = max(len(x) for x, _ in inputs)
    try:
        outs, used, error = run_at_largest_batch(lane.live_worker, inputs, start)
    except BackendError as exc:
        lane.fail(exc, "parity")
        return
    classes = refs[0].shape[1]
    got = np.concatenate([np.asarray(o).reshape(-1, np.asarray(o).shape[-1]) for o in outs])
    want = np.concatenate(refs).reshape(-1, classes)
    res = compare(got, want, lane.precision, lane.tolerance)
    lane.record.parity = {**res.to_dict(), "batch": used}
    note = _fallback_note("parity", used, error)
    if note:
        lane.record.parity["note"] = note
        log(f"{lane.record.preset}/{lane.record.backend}: {note}")
    if not res.ok:
        lane.record.fail("parity-failed", res.message)
        log(f"{lane.record.preset}/{lane.record.backend}: PARITY FAILED: {res.message}")


def accuracy(lane: Lane, test, num_classes: int, ref_pred: np.ndarray,
             log: Callable[[str], None] | None = None) -> None:
    """Top-1 (with its Wilson interval), top-5, macro-F1 and agreement with the reference, on held-out clips;
    top-1 per held-out signer (``test.signers``), the worst signer and a top-1 interval bootstrapped over signers
    (:func:`~signflow_zoo.model.metrics.per_signer_accuracy`).

    Batches of :data:`ACCURACY_BATCH` clips, or the largest smaller batch that works (``accuracy.batch``)."""
    try:
        outs, used, error = run_at_largest_batch(lane.live_worker, [(test.features, test.mask)], ACCURACY_BATCH)
        logits = np.concatenate(outs)
    except BackendError as exc:
        lane.fail(exc, "accuracy")
        return
    note = _fallback_note("accuracy", used, error)
    if note and log is not None:
        log(f"{lane.record.preset}/{lane.record.backend}: {note}")
    rep = classification_report(logits, test.labels, num_classes)
    n = len(test)
    correct = int(round(rep["top1"] * n))
    acc = Accuracy(top1=rep["top1"], top1_ci=wilson_interval(correct, n), top5=rep["top5"],
                   macro_f1=rep["macro_f1"], agreement_top1=float((logits.argmax(1) == ref_pred).mean()),
                   n=n, batch=used, note=note)
    signers = getattr(test, "signers", None)
    if signers is not None and len(signers) == len(logits) == n:  # the logits cover every clip, whatever the batch
        by_signer = per_signer_accuracy(logits.argmax(1), test.labels, signers)
        acc.per_signer, acc.worst_signer = by_signer.per_signer, by_signer.worst_signer
        acc.worst_signer_top1, acc.top1_signer_ci = by_signer.worst_signer_top1, by_signer.top1_ci
    lane.record.accuracy = acc


def latency(lanes: list[Lane], batch: int, features: np.ndarray, mask: np.ndarray, cfg: TimingConfig,
            check: bool, log: Callable[[str], None],
            between_rounds: Callable[[bool], None] | None = None) -> dict[str, Outcome]:
    """Time every live backend at one batch size in the configured schedule (and solo, with ``check``).

    ``between_rounds(settled)`` is called after every round of the interleaved schedule (after its solo stints,
    with ``check``) and after every block of a sequential one: the harness reads its run-stability reference
    there. ``settled``: the schedule has just slept its settling gap after the last block (several backends
    interleaved), so the last block's threads are already quiet.

    Returns the scheduled outcomes (raw blocks, for plots and speedups) by backend name.
    """
    live = [ln for ln in lanes if ln.live]
    key = f"b{batch}"
    cfg = replace(cfg, min_iters=cfg.calls_for(batch))  # batch 1: enough calls for a valid p99
    for ln in list(live):
        try:
            ln.live_worker.call("load", key, features, mask)
        except WorkerError as exc:  # e.g. MemoryError at this batch size: only this batch is lost
            ln.record.latency_errors[batch] = str(exc)
            live.remove(ln)
        except WorkerFailed as exc:
            ln.fail(exc, f"batch {batch}")
            live.remove(ln)
    workers = {ln.record.backend: ln.live_worker for ln in live}
    outcomes = warm(workers, key, cfg)
    solo = {name: Outcome(call_s=o.call_s) for name, o in outcomes.items()}
    # the solo reference: with several backends interleaved, stints alone scattered through the schedule
    # (a stint whenever a backend's solo calls fall below half its scheduled ones), so that drift and
    # machine states hit both readings alike; otherwise two halves, before and after the schedule
    stints = check and cfg.schedule == "interleaved" and sum(o.error is None for o in outcomes.values()) > 1
    if check and not stints:
        for name, o in outcomes.items():
            if o.error is None:
                try:
                    run_solo(workers[name], key, cfg, solo[name], (expected_calls(o, cfg) + 1) // 2)
                except BackendError as exc:
                    o.error = exc
    stint = stints_between_rounds(workers, key, cfg, outcomes, solo) if stints else None
    several = sum(o.error is None for o in outcomes.values()) > 1  # interleaved: each block then ends with the gap

    def after_round(ran: list[str]) -> None:
        if stint is not None:
            stint(ran)
        if between_rounds is not None:
            between_rounds(several)

    sequential = cfg.schedule == "sequential"
    run_schedule(workers, key, cfg, outcomes,
                 on_block=(lambda name, blocks: between_rounds(False)) if between_rounds is not None and sequential else None,
                 after_round=after_round if stint is not None or between_rounds is not None else None)
    if check and not stints:
        for name, o in outcomes.items():
            if o.error is None:
                try:
                    run_solo(workers[name], key, cfg, solo[name], (o.calls + 1) // 2)
                except BackendError as exc:
                    o.error = exc
    for ln in live:
        name = ln.record.backend
        o = outcomes[name]
        if o.error is not None:
            if isinstance(o.error, WorkerFailed):
                ln.fail(o.error, f"timing batch {batch}")
            else:
                ln.record.latency_errors[batch] = str(o.error)
            log(f"{ln.record.preset}/{name}: batch {batch}: {o.error}")
            continue
        stats = summarize(o.blocks, batch, cfg.min_iters, o.discarded)
        ln.record.latency[batch] = stats
        ln.record.samples[batch] = [[round(v / 1e6, 5) for v in block] for block in o.blocks]
        if check and solo[name].blocks:
            alone = summarize(solo[name].blocks, batch)
            ln.record.timing_check[batch] = TimingCheck(
                solo_p50_ms=alone.p50_ms, scheduled_p50_ms=stats.p50_ms, p50_ratio=stats.p50_ms / alone.p50_ms,
                solo_p99_ms=alone.p99_ms, scheduled_p99_ms=stats.p99_ms, p99_ratio=stats.p99_ms / alone.p99_ms)
        try:
            ln.live_worker.call("unload", key)
        except BackendError:
            pass
    return {name: o for name, o in outcomes.items() if o.error is None}


def speedups(records: list[BenchRecord], outcomes: dict[int, dict[str, Outcome]], reference: str) -> None:
    """Each backend's speedup over ``reference`` per batch size, with a bootstrap interval."""
    for batch, by_name in outcomes.items():
        ref = by_name.get(reference)
        if ref is None:
            continue
        for rec in records:
            o = by_name.get(rec.backend)
            if o is None or rec.backend == reference:
                continue
            ratio, lo, hi = bootstrap_ratio_ci(ref.blocks, o.blocks)
            if math.isfinite(ratio):
                rec.speedup[batch] = Speedup(reference, ratio, (lo, hi), distinguishable=not (lo <= 1.0 <= hi))


def streaming(lane: Lane, labels: list[str], clips: list[Any]) -> None:
    """Sign end -> prediction through the real streaming pipeline, in the backend's worker."""
    try:
        lane.record.stream = dict(lane.live_worker.call("stream", labels, clips, budget=60.0))
    except WorkerFailed as exc:
        lane.fail(exc, "streaming")
    except WorkerError as exc:
        lane.record.stream = {"error": str(exc)}


def memory(lane: Lane) -> None:
    try:
        lane.record.memory = Memory(**lane.live_worker.call("memory"))
    except WorkerFailed as exc:
        lane.fail(exc, "memory")
    except WorkerError:
        pass


# -- deployment scenarios (bench --scenarios; docs/deployment.md) ---------------------------------------------
def _section(lane: Lane, name: str, call: Callable[[], dict[str, Any]]) -> None:
    """Run one scenario in the lane's worker; its error is that section's, never the backend's (a dead worker is)."""
    try:
        setattr(lane.record, name, dict(call()))
    except WorkerFailed as exc:
        lane.fail(exc, name.replace("_", "-"))
    except (WorkerError, BackendError) as exc:
        setattr(lane.record, name, {"error": str(exc)})


def capacity(lane: Lane, labels: list[str], clips: list[Any], config: dict[str, Any], batched: dict[str, Any]) -> None:
    """Live streams within the deadline, each sign alone, then with dynamic batching across streams."""
    budget = 4.0 * float(config.get("budget_s", 45.0)) + 60.0

    def both() -> dict[str, Any]:
        out = dict(lane.live_worker.call("capacity", labels, clips, config, budget=budget))
        if not batched:
            return out
        try:
            out["batched"] = dict(lane.live_worker.call("capacity", labels, clips, batched, budget=budget))
        except WorkerError as exc:
            out["batched"] = {"error": str(exc)}
        return out

    _section(lane, "capacity", both)


def server(lane: Lane, requests: list[tuple[np.ndarray, np.ndarray]], config: dict[str, Any]) -> None:
    budget = 4.0 * float(config.get("budget_s", 45.0)) + 60.0
    _section(lane, "server", lambda: lane.live_worker.call("server", requests, config, budget=budget))


def offline(lane: Lane, features: np.ndarray, mask: np.ndarray, batches: tuple[int, ...]) -> None:
    _section(lane, "offline", lambda: lane.live_worker.call("offline", features, mask, batches, budget=120.0))


def cold_start(lane: Lane, runner_cls: type, options: Any, artifacts: Any, features: np.ndarray, mask: np.ndarray,
               runs: int, timeout: float) -> None:
    """Fresh interpreters to the first prediction (:mod:`signflow_zoo.bench.coldstart`), run from the harness."""
    from signflow_zoo.bench import coldstart

    try:
        lane.record.cold_start = coldstart.measure(runner_cls, options, artifacts, features, mask, runs, timeout)
    except Exception as exc:  # noqa: BLE001 - a backend that cannot cold-start here says why, in its section
        lane.record.cold_start = {"error": f"{type(exc).__name__}: {exc}"[:500]}
