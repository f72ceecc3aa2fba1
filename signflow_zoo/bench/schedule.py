"""Schedules: in what order the harness times blocks of calls of several backends at one batch size.

``interleaved`` (default): rounds in which every backend runs one block (the first mover rotates), so
that machine drift during the run hits every backend alike. A switch between two runtimes contaminates
the next calls (the previous runtime's worker threads are still spinning on the cores, caches are
cold), so each block is long (``block_time``), is followed by an idle gap (``settle_time``) in which the
spinning threads go to sleep, and drops its first ``discard`` calls when calls are short.
``sequential``: every block of one backend, then the next backend (settle and discard only at the switch).
``solo``: one backend alone, in the same blocks and gaps with no other backend between them, used by
``--check-timing`` to show what the schedule itself does to the numbers: in stints scattered through the
interleaved schedule (:func:`solo_stint`), or in two halves before and after a sequential one
(:func:`run_solo`). The measurements behind these choices are in ``benchmarks/SCHEDULE.md``.

Every function that waits takes ``sleep`` (default :func:`time.sleep`), and :func:`warm` also ``clock``
(default :func:`time.perf_counter`), so that tests can run a schedule without waiting or patching ``time``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from signflow_zoo.common.errors import BackendError
from signflow_zoo.bench.timing import TimingConfig

Sleep = Callable[[float], None]  # waits that many seconds (time.sleep; a recorder in tests)
Clock = Callable[[], float]  # seconds from an arbitrary origin (time.perf_counter)


class Worker(Protocol):
    """What a schedule needs of a backend's worker: :class:`~signflow_zoo.bench.worker.BackendWorker`, or the
    regression gate's worker of one version (benchmarks/gate_versions.py)."""

    def call(self, cmd: str, *args: Any, budget: float = 0.0) -> Any: ...


@dataclass
class Outcome:
    """What one backend produced at one batch size: timed blocks (ns per call), or the error that stopped it."""

    blocks: list[list[int]] = field(default_factory=list)
    discarded: int = 0
    warmup_calls: int = 0
    call_s: float = 0.0  # estimated seconds per call (from the warm-up)
    error: BackendError | None = None

    @property
    def calls(self) -> int:
        return sum(len(b) for b in self.blocks)

    @property
    def spent_s(self) -> float:
        return sum(sum(b) for b in self.blocks) / 1e9


def _done(o: Outcome, cfg: TimingConfig) -> bool:
    return (o.calls >= cfg.min_iters and o.spent_s >= cfg.min_time) or o.spent_s >= cfg.max_time


def warm(workers: Mapping[str, Worker], key: Any, cfg: TimingConfig, sleep: Sleep = time.sleep,
         clock: Clock = time.perf_counter) -> dict[str, Outcome]:
    """Untimed warm-up of every worker on the loaded batch; estimates each backend's seconds per call."""
    out: dict[str, Outcome] = {}
    for name, w in workers.items():
        o = out[name] = Outcome()
        try:
            t0 = clock()
            calls = list(w.call("warmup", key, cfg.warmup, cfg.warmup_time, budget=cfg.warmup_time))
            o.warmup_calls = len(calls)
            o.call_s = statistics.median(calls) / 1e9 if calls else clock() - t0
        except BackendError as exc:
            o.error = exc
        sleep(cfg.settle_time)
    return out


def _discard(o: Outcome, cfg: TimingConfig) -> int:
    """Drop the first calls after a switch only when a call is short next to a block."""
    return cfg.discard if o.call_s < cfg.block_time / 2 else 0


def _block(w: Worker, key: Any, o: Outcome, cfg: TimingConfig, discard: int, min_calls: int = 1,
           min_seconds: float | None = None) -> None:
    seconds = cfg.block_time if min_seconds is None else min_seconds
    budget = seconds + o.call_s * (discard + min_calls)
    samples, dropped = w.call("time", key, min_calls, seconds, discard, budget=budget)
    o.blocks.append(list(samples))
    o.discarded += int(dropped)


def run_schedule(workers: Mapping[str, Worker], key: Any, cfg: TimingConfig,
                 outcomes: dict[str, Outcome], on_block: Callable[[str, int], None] | None = None,
                 after_round: Callable[[list[str]], None] | None = None, sleep: Sleep = time.sleep) -> None:
    """Time every worker that warmed up without error, per ``cfg.schedule``, until each has
    ``min_iters`` calls and ``min_time`` seconds (or ``max_time``). Errors end only that backend.
    ``after_round`` (interleaved only) is called with the backends that ran a block in each round."""
    names = [n for n in workers if outcomes[n].error is None]
    if cfg.schedule == "sequential":
        for name in names:
            o, first = outcomes[name], True
            while o.error is None and not _done(o, cfg):
                try:
                    _block(workers[name], key, o, cfg, _discard(o, cfg) if first else 0)
                except BackendError as exc:
                    o.error = exc
                first = False
                if on_block:
                    on_block(name, len(o.blocks))
            sleep(cfg.settle_time)
        return
    rnd = 0
    several = len(names) > 1
    while True:
        active = [n for n in names if outcomes[n].error is None and not _done(outcomes[n], cfg)]
        if not active:
            return
        k = rnd % len(names)
        ran = []
        for name in names[k:] + names[:k]:
            if name not in active:
                continue
            o = outcomes[name]
            try:
                _block(workers[name], key, o, cfg, _discard(o, cfg) if (several or rnd == 0) else 0)
                ran.append(name)
            except BackendError as exc:
                o.error = exc
            if on_block:
                on_block(name, len(o.blocks))
            if several:
                sleep(cfg.settle_time)
        if after_round and ran:
            after_round(ran)
        rnd += 1


def run_solo(worker: Worker, key: Any, cfg: TimingConfig, o: Outcome, calls: int,
             continuous: bool = False, sleep: Sleep = time.sleep) -> None:
    """One half of a solo measurement: ``calls`` calls of this backend alone.

    By default in the schedule's own duty cycle (blocks of ``block_time``, each followed by the settling gap
    and dropping its first calls like a scheduled block), so that solo and scheduled readings differ only in
    whether other backends ran in between: on this project's machine continuous calls read up to 10% slower
    than the same calls in blocks with gaps (benchmarks/SCHEDULE.md), an effect of load, not of the schedule.
    ``continuous=True``: one block of back-to-back calls."""
    if continuous:
        _block(worker, key, o, cfg, _discard(o, cfg), min_calls=max(1, calls), min_seconds=0.0)
        return
    target = o.calls + max(1, calls)
    while o.calls < target:
        _block(worker, key, o, cfg, _discard(o, cfg))
        sleep(cfg.settle_time)


def solo_stint(worker: Worker, key: Any, cfg: TimingConfig, o: Outcome, blocks: int = 2,
               sleep: Sleep = time.sleep) -> None:
    """A backend alone for ``blocks`` blocks in a row, each followed by the settling gap, in the middle of a
    schedule. The first block follows another backend, as a scheduled block does, and is not kept; the
    later ones follow only this backend and go into ``o``. ``--check-timing`` scatters such stints through
    the interleaved schedule, so that a change of machine state hits the solo and the scheduled readings
    alike (solo halves before and after the schedule read large batch-32 calls up to 16% off when the
    machine changed state in between: benchmarks/SCHEDULE.md)."""
    lead = Outcome(call_s=o.call_s)
    _block(worker, key, lead, cfg, _discard(o, cfg))
    sleep(cfg.settle_time)
    for _ in range(max(1, blocks - 1)):
        _block(worker, key, o, cfg, _discard(o, cfg))
        sleep(cfg.settle_time)


def stints_between_rounds(workers: Mapping[str, Worker], key: Any, cfg: TimingConfig,
                          outcomes: dict[str, Outcome], solo: dict[str, Outcome],
                          sleep: Sleep = time.sleep) -> Callable[[list[str]], None]:
    """``run_schedule``'s ``after_round`` for ``--check-timing``: after a round, a :func:`solo_stint` for each
    backend that ran in it and whose solo calls are below half its scheduled calls."""

    def after_round(ran: list[str]) -> None:
        for name in ran:
            o = outcomes[name]
            if o.error is None and 2 * solo[name].calls < o.calls:
                try:
                    solo_stint(workers[name], key, cfg, solo[name], sleep=sleep)
                except BackendError as exc:
                    o.error = exc

    return after_round


def expected_calls(o: Outcome, cfg: TimingConfig) -> int:
    """Calls the schedule will time for a backend whose call takes ``o.call_s``."""
    by_time = math.ceil(cfg.min_time / o.call_s) if o.call_s > 0 else cfg.min_iters
    return int(min(max(cfg.min_iters, by_time), max(cfg.min_iters, cfg.max_time / max(o.call_s, 1e-9))))
