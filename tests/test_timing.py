import pytest

from signflow_zoo.errors import SignFlowError
from signflow_zoo.parity import compare
from signflow_zoo.timing import TimingConfig, measure_interleaved, percentile, summarize


def test_percentiles_interpolate():
    vals = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(vals, 50) == 3.0
    assert percentile(vals, 90) == pytest.approx(4.6)
    assert percentile(vals, 0) == 1.0 and percentile(vals, 100) == 5.0


def test_summarize_stats_and_throughput():
    st = summarize([1_000_000] * 9 + [1_500_000], batch=4)  # ns
    assert st.p50_ms == 1.0 and st.max_ms == 1.5 and st.iterations == 10
    assert st.mean_ms == pytest.approx(1.05)
    assert st.throughput_seq_s == pytest.approx(4 / 1.05e-3)
    assert not st.noisy


def test_wide_spread_is_flagged_noisy():
    assert summarize([1_000_000, 1_000_000, 9_000_000, 1_000_000, 30_000_000], batch=1).noisy


def test_interleaved_rounds_reach_min_iters_for_every_backend():
    order = []
    calls = {n: ((lambda n=n: order.append(n)), None) for n in ("a", "b", "c")}
    cfg = TimingConfig(warmup=2, min_iters=20, min_time=0.0, round_iters=5)
    stats = measure_interleaved(calls, 1, cfg)
    assert {n: s.iterations for n, s in stats.items()} == {"a": 20, "b": 20, "c": 20}
    timed = order[6:]  # after 3 x 2 warm-up calls
    # rounds interleave: the backends alternate in blocks of round_iters, and the first mover rotates
    blocks = [timed[i] for i in range(0, len(timed), 5)]
    assert blocks[:6] == ["a", "b", "c", "b", "c", "a"]


def test_min_time_extends_iterations():
    n = {"x": 0}

    def slow():
        n["x"] += 1
        s = 0
        for i in range(20000):
            s += i
        return s

    stats = measure_interleaved({"x": (slow, None)}, 1, TimingConfig(warmup=0, min_iters=1, min_time=0.05, round_iters=1))
    assert stats["x"].iterations > 1 and stats["x"].total_s >= 0.05


def test_sync_is_called_after_every_timed_call():
    seen = []
    calls = {"gpu": ((lambda: seen.append("run")), (lambda: seen.append("sync")))}
    measure_interleaved(calls, 1, TimingConfig(warmup=0, min_iters=3, min_time=0, round_iters=3))
    assert seen == ["run", "sync"] * 3


def test_nonsense_timing_config_is_refused():
    with pytest.raises(SignFlowError):
        TimingConfig(min_iters=0).validate()


def test_parity_tolerance_depends_on_precision():
    import numpy as np

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 10)) * 5
    assert compare(ref + 1e-6, ref, "fp32").ok
    r = compare(ref + 1e-2, ref, "fp32")
    assert not r.ok and "fp32" in r.message
    assert compare(ref + 1e-2, ref, "tf32").ok
    noisy = ref + rng.standard_normal(ref.shape) * 0.5
    res = compare(noisy, ref, "int8")
    assert res.max_abs > 0.5 and (res.ok == (res.top1_agreement >= 0.90))
    assert not compare(np.full_like(ref, np.nan), ref, "bf16").ok
    assert not compare(ref[:, :5], ref, "fp32").ok


def test_warmup_is_capped_by_time_for_slow_calls():
    import time as _t

    calls = []

    def slow():
        calls.append(1)
        _t.sleep(0.02)

    measure_interleaved({"s": (slow, None)}, 1, TimingConfig(warmup=50, warmup_time=0.05, min_iters=1, min_time=0,
                                                             round_iters=1))
    assert 3 <= len(calls) - 1 <= 6  # 2..5 warm-up calls instead of 50, then one timed call
