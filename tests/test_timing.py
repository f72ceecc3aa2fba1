"""The harness's timing core: block timing, statistics with intervals, the noisy rule, and schedules."""

import time

import numpy as np
import pytest

from signflow_zoo.common.errors import BackendError, SignFlowError
from signflow_zoo.model.metrics import wilson_interval
from signflow_zoo.backends.parity import compare
from signflow_zoo.bench.schedule import Outcome, expected_calls, run_schedule, warm
from signflow_zoo.bench.timing import TimingConfig, reference_workload, time_block, warm_up
from signflow_zoo.results.latency import NOISY_CI, bootstrap_median_ci, bootstrap_ratio_ci, percentile, summarize


def test_percentiles_interpolate():
    vals = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(vals, 50) == 3.0
    assert percentile(vals, 90) == pytest.approx(4.6)
    assert percentile(vals, 0) == 1.0 and percentile(vals, 100) == 5.0


def test_summarize_stats_throughput_and_interval():
    rng = np.random.default_rng(0)
    blocks = [list((1_000_000 + rng.integers(-20_000, 20_000, 50)).astype(int)) for _ in range(10)]
    st = summarize(blocks, batch=4, min_iters=100)
    allv = np.concatenate(blocks) / 1e6
    assert st.iterations == 500 and st.blocks == 10 and st.valid
    assert st.p50_ms == pytest.approx(np.median(allv)) and st.max_ms == pytest.approx(allv.max())
    assert st.throughput_seq_s == pytest.approx(4 / (allv.mean() / 1e3))
    lo, hi = st.p50_ci_ms
    assert lo <= st.p50_ms <= hi and (hi - lo) / st.p50_ms < 0.02
    assert not st.noisy and st.noisy_why == ""


def test_fewer_calls_than_min_iters_is_not_valid():
    assert not summarize([[1_000_000] * 5], batch=1, min_iters=20).valid


def test_blocks_that_disagree_give_a_wide_interval_and_are_noisy():
    # the machine slowed down half-way: every call in a block is steady, but blocks differ by 40%
    blocks = [[1_000_000] * 30 for _ in range(4)] + [[1_400_000] * 30 for _ in range(4)]
    st = summarize(blocks, batch=1)
    lo, hi = st.p50_ci_ms
    assert (hi - lo) / st.p50_ms > NOISY_CI and st.noisy and "interval" in st.noisy_why
    # the same values as one block: no block structure, the calls alone look steadier
    flat = summarize([sum(blocks, [])], batch=1)
    assert flat.p50_ci_ms[1] - flat.p50_ci_ms[0] <= hi - lo


def test_a_heavy_tail_is_noisy_even_with_a_tight_median():
    blocks = [[1_000_000] * 97 + [5_000_000] * 3 for _ in range(6)]
    st = summarize(blocks, batch=1)
    assert st.p50_ci_ms == pytest.approx((1.0, 1.0)) and st.p99_ms >= 4.0
    assert st.noisy and "p99" in st.noisy_why


def test_bootstrap_interval_covers_the_truth_and_shrinks_with_data():
    rng = np.random.default_rng(1)
    small = [list(rng.normal(10, 1, 20)) for _ in range(4)]
    large = [list(rng.normal(10, 1, 200)) for _ in range(20)]
    s_lo, s_hi = bootstrap_median_ci(small)
    l_lo, l_hi = bootstrap_median_ci(large)
    assert s_lo < 10 < s_hi and l_lo < 10 < l_hi
    assert (l_hi - l_lo) < (s_hi - s_lo)


def test_ratio_interval_separates_different_speeds_and_not_equal_ones():
    rng = np.random.default_rng(2)
    fast = [list(rng.normal(1.0, 0.05, 50)) for _ in range(8)]
    slow = [list(rng.normal(2.0, 0.1, 50)) for _ in range(8)]
    same = [list(rng.normal(1.0, 0.05, 50)) for _ in range(8)]
    ratio, lo, hi = bootstrap_ratio_ci(slow, fast)
    assert ratio == pytest.approx(2.0, rel=0.05) and lo > 1.0
    ratio, lo, hi = bootstrap_ratio_ci(same, fast)
    assert lo <= 1.0 <= hi


def test_time_block_times_each_call_and_reaches_count_and_duration():
    seen = []
    samples, dropped = time_block(lambda: seen.append("run"), lambda: seen.append("sync"), 5, 0.0, discard=2)
    assert len(samples) == 5 and dropped == 2 and seen == ["run", "sync"] * 7
    samples, _ = time_block(lambda: time.sleep(0.002), None, 1, 0.03)
    assert len(samples) >= 5 and sum(samples) >= 0.03e9 and all(s >= 1.5e6 for s in samples)


def test_warm_up_is_capped_by_time_for_slow_calls():
    calls = []
    times = warm_up(lambda: (calls.append(1), time.sleep(0.02)), None, 50, 0.05)
    assert len(times) == len(calls) and 2 <= len(times) <= 5 and all(t >= 15e6 for t in times)


def test_nonsense_timing_config_is_refused():
    for bad in ({"min_iters": 0}, {"block_time": 0}, {"schedule": "random"}, {"timeout": float("nan")},
                {"settle_time": -1}):
        with pytest.raises(SignFlowError):
            TimingConfig(**bad).validate()


def test_reference_workload_is_a_positive_time():
    assert 0 < reference_workload(repeats=3, size=64) < 1000


class FakeWorker:
    """Stands in for a worker process: records the order of requests, returns fixed call times."""

    def __init__(self, name, log, call_ns=100_000, fail_on=None):
        self.name, self.log, self.call_ns, self.fail_on = name, log, call_ns, fail_on

    def call(self, cmd, *args, budget=0.0):
        if self.fail_on == cmd:
            raise BackendError(f"{self.name} failed at {cmd}")
        if cmd == "warmup":
            return [self.call_ns] * 3
        if cmd == "time":
            _key, min_calls, min_seconds, discard = args
            n = max(min_calls, int(np.ceil(min_seconds * 1e9 / self.call_ns)))
            self.log.append((self.name, discard))
            return [self.call_ns] * n, discard
        raise AssertionError(cmd)


def _workers(names, **kw):
    log = []
    return {n: FakeWorker(n, log, **kw) for n in names}, log


def test_interleaved_schedule_alternates_blocks_rotates_the_first_mover_and_drops_calls_after_switches():
    workers, log = _workers("abc")
    cfg = TimingConfig(min_iters=1, min_time=0.005, block_time=0.001, settle_time=0.0, discard=2)
    out = {n: Outcome(call_s=100e-6) for n in workers}
    run_schedule(workers, "k", cfg, out)
    order = [n for n, _ in log]
    assert order[:9] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(d == 2 for _, d in log)  # every block follows a switch
    assert all(o.spent_s >= cfg.min_time and o.calls >= cfg.min_iters for o in out.values())
    assert all(len(b) == 10 for o in out.values() for b in o.blocks)


def test_sequential_schedule_runs_each_backend_to_the_end_and_drops_calls_only_at_the_switch():
    workers, log = _workers("ab")
    cfg = TimingConfig(schedule="sequential", min_iters=1, min_time=0.003, block_time=0.001, settle_time=0.0, discard=1)
    out = {n: Outcome(call_s=100e-6) for n in workers}
    run_schedule(workers, "k", cfg, out)
    assert [n for n, _ in log] == ["a"] * 3 + ["b"] * 3
    assert [d for _, d in log] == [1, 0, 0, 1, 0, 0]


def test_long_calls_are_not_discarded():
    workers, log = _workers("ab", call_ns=80_000_000)  # 80 ms calls, 100 ms blocks
    cfg = TimingConfig(min_iters=3, min_time=0.0, block_time=0.1, settle_time=0.0, discard=1)
    out = {n: Outcome(call_s=0.08) for n in workers}
    run_schedule(workers, "k", cfg, out)
    assert all(d == 0 for _, d in log) and all(o.calls >= 3 for o in out.values())


def test_an_error_ends_only_that_backend():
    log = []
    workers = {"ok": FakeWorker("ok", log), "bad": FakeWorker("bad", log, fail_on="time")}
    cfg = TimingConfig(min_iters=1, min_time=0.002, block_time=0.001, settle_time=0.0)
    out = warm(workers, "k", cfg)
    run_schedule(workers, "k", cfg, out)
    assert out["ok"].error is None and out["ok"].spent_s >= 0.002
    assert isinstance(out["bad"].error, BackendError) and not out["bad"].blocks


def test_warm_up_settles_after_each_backend_and_times_a_silent_warm_up_with_the_clock():
    """A worker whose warm-up returns no call times: the estimate is the warm-up's own duration on ``clock``."""
    log = []
    workers = {"timed": FakeWorker("timed", log, call_ns=2_000_000), "silent": FakeWorker("silent", log),
               "bad": FakeWorker("bad", log, fail_on="warmup")}
    workers["silent"].call = lambda cmd, *args, budget=0.0: []
    ticks = iter([10.0, 20.0, 20.5, 30.0])  # timed: start only; silent: start and end; bad: start
    sleeps = []
    cfg = TimingConfig(settle_time=0.3)
    out = warm(workers, "k", cfg, sleep=sleeps.append, clock=lambda: next(ticks))
    assert out["timed"].call_s == pytest.approx(0.002) and out["timed"].warmup_calls == 3
    assert out["silent"].call_s == pytest.approx(0.5) and out["silent"].warmup_calls == 0
    assert isinstance(out["bad"].error, BackendError) and out["bad"].call_s == 0.0
    assert sleeps == [0.3] * 3


def test_expected_calls_follow_min_iters_and_min_time():
    cfg = TimingConfig(min_iters=20, min_time=1.0)
    assert expected_calls(Outcome(call_s=0.001), cfg) == 1000
    assert expected_calls(Outcome(call_s=0.5), cfg) == 20


def test_wilson_interval_is_honest_at_small_n_and_at_the_edges():
    lo, hi = wilson_interval(256, 320)  # 80.0% of 320 clips
    assert lo == pytest.approx(0.753, abs=0.002) and hi == pytest.approx(0.840, abs=0.002)
    assert wilson_interval(320, 320)[1] == 1.0 and wilson_interval(320, 320)[0] < 0.99  # exactly: a plot's error bar
    for k in range(0, 321):  # the interval always holds the estimate (rounding once put 1 - 1e-16 above 320/320)
        lo, hi = wilson_interval(k, 320)
        assert 0.0 <= lo <= k / 320 <= hi <= 1.0
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] > 0.2


def test_parity_tolerance_depends_on_precision():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 10)) * 5
    assert compare(ref + 1e-6, ref, "fp32").ok
    r = compare(ref + 1e-2, ref, "fp32")
    assert not r.ok and "fp32" in r.message
    assert compare(ref + 1e-2, ref, "tf32").ok
    assert not compare(np.full_like(ref, np.nan), ref, "bf16").ok
    assert not compare(ref[:, :5], ref, "fp32").ok


def _top1_flipped(agreeing: int, samples: int = 100, classes: int = 10):
    """Reference logits, and outputs far off in value whose arg-max matches the reference on exactly
    ``agreeing`` of ``samples`` rows (the others point at the next class)."""
    ref = np.zeros((samples, classes))
    ref[np.arange(samples), np.arange(samples) % classes] = 5.0
    out = ref * 3.0 - 1.0  # a large error everywhere, top-1 kept ...
    for i in range(agreeing, samples):  # ... except on the last rows, where the next class wins
        out[i, (i + 1) % classes] = 100.0
    return out, ref


@pytest.mark.parametrize("agreeing, ok", [(95, True), (90, True), (89, False), (85, False)])
def test_int8_parity_is_judged_by_top1_agreement_against_0_90(agreeing, ok):
    out, ref = _top1_flipped(agreeing)
    res = compare(out, ref, "int8")
    assert res.top1_agreement == pytest.approx(agreeing / 100)
    assert res.max_abs >= 10.0  # no error bound for int8: only the agreement decides
    assert res.ok is ok
    assert res.min_agreement == 0.90 and res.tolerance_rel is None
    assert (res.message == "ok") if ok else ("top-1 agreement 0.8" in res.message and "int8" in res.message)


class _RecordingWorker:
    """Stands in for a worker process: each ``time`` request returns ~block_time worth of 1 ms calls."""

    def __init__(self):
        self.requests = []

    def call(self, op, key, min_calls, seconds, discard, budget=None):
        self.requests.append((min_calls, seconds, discard))
        n = max(min_calls, int(seconds / 0.001))
        return [1_000_000] * n, discard


def test_solo_reference_runs_in_the_schedules_blocks_and_gaps():
    from signflow_zoo.bench.schedule import Outcome, run_solo

    sleeps = []
    cfg = TimingConfig(block_time=0.1, settle_time=0.02, discard=1)
    w, o = _RecordingWorker(), Outcome(call_s=0.001)
    run_solo(w, "k", cfg, o, 250, sleep=sleeps.append)
    # 100 ms blocks of 1 ms calls, each dropping its first call and followed by the 20 ms gap, until 250 calls
    assert o.calls >= 250 and len(o.blocks) == 3 and all(len(b) == 100 for b in o.blocks)
    assert w.requests == [(1, 0.1, 1)] * 3 and sleeps == [0.02] * 3 and o.discarded == 3


def test_continuous_solo_is_one_block_of_back_to_back_calls():
    from signflow_zoo.bench.schedule import Outcome, run_solo

    sleeps = []
    w, o = _RecordingWorker(), Outcome(call_s=0.001)
    run_solo(w, "k", TimingConfig(block_time=0.1, settle_time=0.02, discard=1), o, 250, continuous=True,
             sleep=sleeps.append)
    assert w.requests == [(250, 0.0, 1)] and len(o.blocks) == 1 and sleeps == []


def test_check_timing_scatters_solo_stints_through_the_interleaved_schedule():
    """With several backends, each solo stint is two blocks alone (the first, which follows another backend,
    is dropped) placed between rounds, whenever a backend's solo calls fall below half its scheduled ones:
    solo and scheduled readings then span the same stretch of time."""
    from signflow_zoo.bench.schedule import Outcome, run_schedule, stints_between_rounds

    sleeps = []
    cfg = TimingConfig(block_time=0.1, settle_time=0.02, discard=1, min_iters=20, min_time=1.0)
    log = []

    class Worker(_RecordingWorker):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def call(self, op, key, min_calls, seconds, discard, budget=None):
            log.append(self.name)
            return super().call(op, key, min_calls, seconds, discard, budget)

    workers = {n: Worker(n) for n in ("a", "b")}
    outcomes = {n: Outcome(call_s=0.001) for n in workers}
    solo = {n: Outcome(call_s=0.001) for n in workers}
    stints = []
    stint_rule = stints_between_rounds(workers, "k", cfg, outcomes, solo, sleep=sleeps.append)

    def between(ran):
        before = {n: len(solo[n].blocks) for n in ran}
        stint_rule(ran)
        stints.extend((n, outcomes[n].calls) for n in ran if len(solo[n].blocks) > before[n])

    run_schedule(workers, "k", cfg, outcomes, after_round=between, sleep=sleeps.append)
    rounds = len(outcomes["a"].blocks)
    assert rounds == 10  # 100 ms blocks of 1 ms calls until 1 s
    for n in workers:
        # one kept block per stint, stints spread from the first round to the last half of the schedule
        assert len(solo[n].blocks) == len([s for s in stints if s[0] == n]) >= rounds // 2
        assert solo[n].calls * 2 >= outcomes[n].calls - 100
        assert min(c for m, c in stints if m == n) == 100 and max(c for m, c in stints if m == n) >= 700
    # a stint is two requests of the same backend in a row (the lead block and the kept one)
    assert "a" in log and log.count("a") == rounds + 2 * len([s for s in stints if s[0] == "a"])
    # the settling gap after every block: each scheduled block (two backends interleaved) and each stint block
    assert sleeps == [cfg.settle_time] * len(log)


# -- valid tails: LoadGen's early-stopping bound of the p99 ---------------------------------------------

def _exact_cdf(k, n, p):
    """Exact binomial CDF in rational arithmetic: an independent check of the float computation."""
    from fractions import Fraction
    from math import comb

    q = Fraction(p).limit_denominator(1000)
    return float(sum(comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(k + 1)))


@pytest.mark.parametrize("n", [459, 460, 600, 1000, 1500])
def test_tail_rank_is_the_smallest_order_statistic_that_bounds_the_p99_at_99_percent(n):
    from signflow_zoo.results.latency import tail_rank

    k = tail_rank(n)
    assert k is not None and k <= n
    assert _exact_cdf(k - 1, n, 0.99) >= 0.99  # x_(k) >= the true p99 with 99% confidence ...
    assert _exact_cdf(k - 2, n, 0.99) < 0.99  # ... and x_(k-1) would not be enough


def test_too_few_calls_claim_no_p99():
    from signflow_zoo.results.latency import min_calls_for_tail, tail_rank, tail_upper_bound

    assert min_calls_for_tail() == 459
    assert tail_rank(458) is None and tail_upper_bound(list(range(458))) is None
    st = summarize([[1_000_000 + i for i in range(458)]], batch=1)
    assert st.p99_upper_ms is None and not st.p99_valid and st.to_dict()["n"] == 458
    st = summarize([[1_000_000 + 1000 * i for i in range(1000)]], batch=1)
    # the bound is an order statistic at or above the p99 (rank 998 of 1000 calls)
    assert st.p99_valid and st.p99_upper_ms == pytest.approx((1_000_000 + 1000 * 997) / 1e6)
    assert st.p99_upper_ms >= st.p99_ms


def test_tail_iters_apply_at_batch_1_only():
    cfg = TimingConfig(min_iters=20, tail_iters=460)
    assert cfg.calls_for(1) == 460 and cfg.calls_for(32) == 20
    assert TimingConfig(min_iters=20, tail_iters=0).calls_for(1) == 20
    with pytest.raises(SignFlowError, match="tail-iters"):
        TimingConfig(tail_iters=-1).validate()
