"""Per-signer accuracy: top-1 of each held-out signer, the worst signer, and a top-1 interval bootstrapped over
signers; through the harness into the record, the flat record (MLflow metrics) and the report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from signflow_zoo.model.metrics import per_signer_accuracy, wilson_interval


def _clips(per_signer: dict[str, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(preds, labels, signers) with ``correct`` of ``n`` clips right for each signer, the signers interleaved."""
    rows = []
    for signer, (correct, n) in per_signer.items():
        rows += [(signer, i < correct) for i in range(n)]
    order = np.random.default_rng(3).permutation(len(rows))  # clips of a signer need not be contiguous
    rows = [rows[i] for i in order]
    labels = np.arange(len(rows)) % 5
    preds = np.where([ok for _, ok in rows], labels, (labels + 1) % 5)
    return preds, labels, [s for s, _ in rows]


def test_per_signer_top1_and_the_worst_signer_are_exact():
    preds, labels, signers = _clips({"s1": (4, 4), "s2": (1, 4), "s3": (3, 4), "": (2, 2), "unknown": (0, 1)})
    res = per_signer_accuracy(preds, labels, signers)
    assert res.per_signer == {"s1": {"top1": 1.0, "n": 4}, "s2": {"top1": 0.25, "n": 4}, "s3": {"top1": 0.75, "n": 4},
                              "": {"top1": 1.0, "n": 2}, "unknown": {"top1": 0.0, "n": 1}}
    # clips without a signer id are one group named as they are ("" and "unknown" are not merged)
    assert res.worst_signer == "unknown" and res.worst_signer_top1 == 0.0
    assert sum(v["n"] for v in res.per_signer.values()) == len(labels)
    # ties: the first signer by name
    tie = per_signer_accuracy(*_clips({"b": (1, 2), "a": (2, 4), "c": (2, 2)}))
    assert (tie.worst_signer, tie.worst_signer_top1) == ("a", 0.5)
    # None is a clip without an id, like ""
    none = per_signer_accuracy(np.array([0, 1, 0]), np.array([0, 0, 0]), [None, "", "x"])
    assert none.per_signer == {"": {"top1": 0.5, "n": 2}, "x": {"top1": 1.0, "n": 1}}


def test_signer_bootstrap_holds_the_pooled_top1_and_is_wider_than_wilson_when_signers_differ():
    # 10 signers of 50 clips: five at 100%, five at 20% -> pooled 60% over 500 clips
    spec = {f"s{i:02d}": (50 if i % 2 else 10, 50) for i in range(10)}
    preds, labels, signers = _clips(spec)
    pooled = float((preds == labels).mean())
    assert pooled == pytest.approx(0.6)
    res = per_signer_accuracy(preds, labels, signers)
    assert res.top1_ci is not None
    lo, hi = res.top1_ci
    assert lo <= pooled <= hi
    wlo, whi = wilson_interval(int((preds == labels).sum()), len(labels))
    assert hi - lo > 3 * (whi - wlo)  # about +-25 points over signers, +-4.3 over (not independent) clips
    assert 0.3 < lo < pooled < hi < 0.9
    assert res.worst_signer == "s00" and res.worst_signer_top1 == pytest.approx(0.2)
    # reproducible: a fixed seed, the same interval every time; another seed, another draw
    assert per_signer_accuracy(preds, labels, signers).top1_ci == res.top1_ci
    varied = _clips({f"s{i:02d}": (c, n) for i, (c, n) in enumerate([(3, 17), (25, 31), (9, 40), (30, 33), (12, 29),
                                                                      (41, 45), (7, 22), (19, 38), (26, 27), (5, 36)])})
    assert per_signer_accuracy(*varied).top1_ci == per_signer_accuracy(*varied).top1_ci
    assert per_signer_accuracy(*varied, seed=1).top1_ci != per_signer_accuracy(*varied).top1_ci


def test_signers_that_agree_give_a_narrow_interval_and_one_signer_gives_none():
    same = per_signer_accuracy(*_clips({f"s{i}": (3, 4) for i in range(6)}))
    assert same.top1_ci == (0.75, 0.75)  # every resample is 75%: signers do not differ
    one = per_signer_accuracy(*_clips({"only": (7, 10)}))
    assert one.top1_ci is None  # one signer: no interval over signers can be drawn, not a fake one
    assert one.per_signer == {"only": {"top1": 0.7, "n": 10}} and (one.worst_signer, one.worst_signer_top1) == ("only", 0.7)
    empty = per_signer_accuracy(np.array([]), np.array([]), [])
    assert empty.per_signer == {} and empty.worst_signer_top1 is None and empty.top1_ci is None
    with pytest.raises(ValueError, match="one of each per clip"):
        per_signer_accuracy(np.array([0, 1]), np.array([0, 1]), ["a"])


def test_thousands_of_clips_and_signers_are_vectorised():
    rng = np.random.default_rng(0)
    n = 50_000
    signers = [f"signer-{i}" for i in rng.integers(0, 2000, n)]
    labels = rng.integers(0, 20, n)
    preds = np.where(rng.random(n) < 0.8, labels, (labels + 1) % 20)
    res = per_signer_accuracy(preds, labels, signers)
    assert len(res.per_signer) == len(set(signers)) and res.top1_ci is not None
    assert res.top1_ci[0] <= float((preds == labels).mean()) <= res.top1_ci[1]


class _SmallBatchWorker:
    """A worker whose runner fails above 4 clips per call (as out of memory would); its logits say, per clip,
    whether its signer's prediction is right (feature [0, 0] holds the clip's index)."""

    def __init__(self, right: np.ndarray, labels: np.ndarray, classes: int):
        self.right, self.labels, self.classes = right, labels, classes

    def call(self, cmd, *args, budget=0.0):
        from signflow_zoo.bench.worker import WorkerError

        assert cmd == "run_many"
        outs = []
        for x, _ in args[0]:
            if len(x) > 4:
                raise WorkerError("MemoryError", f"a batch of {len(x)}")
            idx = x[:, 0, 0].astype(int)
            pred = np.where(self.right[idx], self.labels[idx], (self.labels[idx] + 1) % self.classes)
            outs.append(np.eye(self.classes, dtype=np.float32)[pred])
        return outs


def test_accuracy_scenario_fills_the_record_at_a_smaller_batch():
    from signflow_zoo.bench import scenarios
    from signflow_zoo.data.datasets import SignDataset
    from signflow_zoo.data.features import FEATURE_DIM
    from signflow_zoo.results.records import BenchRecord

    preds, labels, signers = _clips({"ana": (9, 10), "ben": (2, 10), "cleo": (8, 10)})
    n = len(labels)
    features = np.zeros((n, 3, FEATURE_DIM), np.float32)
    features[:, 0, 0] = np.arange(n)
    test = SignDataset(features, np.ones((n, 3), bool), labels.astype(np.int64), [f"c{i}" for i in range(5)], signers)
    lane = scenarios.Lane(BenchRecord("r", "p", "fake"), _SmallBatchWorker(preds == labels, labels, 5))  # type: ignore[arg-type]
    scenarios.accuracy(lane, test, 5, ref_pred=labels)
    acc = lane.record.accuracy
    assert acc is not None and acc.batch == 3 and acc.n == n  # 30 -> 15 -> 7 -> 3 clips per call
    assert acc.per_signer == {"ana": {"top1": 0.9, "n": 10}, "ben": {"top1": 0.2, "n": 10},
                              "cleo": {"top1": 0.8, "n": 10}}
    assert (acc.worst_signer, acc.worst_signer_top1) == ("ben", 0.2)
    assert acc.top1_signer_ci is not None and acc.top1_signer_ci[0] <= acc.top1 <= acc.top1_signer_ci[1]
    # the JSON round trip, and the flat keys (MLflow metrics and one param)
    from signflow_zoo.results.files import flatten, split_flat

    d = lane.record.to_dict()
    assert BenchRecord.from_dict(json.loads(json.dumps(d))).accuracy == acc
    params, metrics = split_flat(flatten(d, {}))
    assert params["worst_signer"] == "ben" and metrics["accuracy_worst_signer_top1"] == 0.2
    assert metrics["accuracy_signers"] == 3
    assert (metrics["accuracy_top1_signer_ci_lo"], metrics["accuracy_top1_signer_ci_hi"]) == acc.top1_signer_ci


def test_report_shows_the_worst_signer_in_every_view():
    from signflow_zoo import report
    from signflow_zoo.report.tables import WORST_NOTE

    base = {"preset": "tiny", "backend": "torch-eager", "host": "h", "status": "ok", "invocation_id": "i",
            "created": "2026-12-01T10:00:00Z", "accuracy_top1": 0.8, "accuracy_top1_ci_lo": 0.75,
            "accuracy_top1_ci_hi": 0.85, "latency_p50_ms_b1": 1.0}
    several = dict(base, accuracy_worst_signer_top1=0.55, worst_signer="signer-07", accuracy_top1_signer_ci_lo=0.6,
                   accuracy_top1_signer_ci_hi=0.93, accuracy_signers=4)
    one = dict(base, backend="onnx-cpu", accuracy_worst_signer_top1=0.8, worst_signer="", accuracy_signers=1)
    narrow = report.comparison_table([several, one])
    assert max(len(line) for line in narrow.splitlines()) <= report.TERMINAL_WIDTH
    header = [h.strip() for h in narrow.splitlines()[0].split("  ") if h.strip()]
    assert header[header.index("top-1") + 1] == "worst signer"  # beside top-1
    assert "55.0%" in narrow and WORST_NOTE in " ".join(narrow.split())
    wide = report.comparison_table([several, one], wide=True)
    assert "55.0% (signer-07)" in wide and "[60-93]" in wide
    assert "80.0% (no id)" in wide and "none (1 signer)" in wide  # one signer: said, not a fake interval
    md = report.comparison_table([several, one], fmt="markdown")
    assert "worst signer" in md and "signer-07" in md and "[60-93]" in md
    rows = {r["backend"]: r for r in json.loads(report.comparison_table([several, one], fmt="json"))}
    assert rows["torch-eager"]["worst_signer"] == "signer-07" and rows["torch-eager"]["accuracy_signers"] == 4
    assert rows["torch-eager"]["accuracy_top1_signer_ci_lo"] == 0.6 and rows["onnx-cpu"]["accuracy_top1_signer_ci_lo"] is None
    csv_text = report.comparison_table([several, one], fmt="csv")
    assert "accuracy_worst_signer_top1" in csv_text.splitlines()[0] and "signer-07" in csv_text
    # a record from before per-signer accuracy shows no such column
    old = report.comparison_table([base])
    assert "worst signer" not in old.splitlines()[0]


@pytest.mark.slow
def test_bench_records_per_signer_accuracy_end_to_end(warm_home, tmp_path, monkeypatch):
    """A trained tiny model benched on data whose test split holds several signers: the record, the flat record and
    the markdown table written next to the result."""
    from signflow_zoo import report
    from signflow_zoo.bench.harness import BenchConfig, load_splits_cached, run_bench
    from signflow_zoo.bench import roofline
    from signflow_zoo.results.files import flat_records

    monkeypatch.setattr(roofline, "load_or_measure", lambda threads, **kw: {"ceilings": {"fp32": 1.0}})  # ~20 s saved
    (ckpt,) = (warm_home / "checkpoints").glob("tiny-*.pt")
    model = shutil.copyfile(ckpt, tmp_path / "tiny.pt")
    data = "synthetic:classes=4,signers=20,clips=1,seed=1"  # the tiny model's classes; 3 held-out signers
    cfg = BenchConfig.quick(model=str(model), backends="torch-eager", data=data, exporter="legacy", track=False,
                            stream=False, plots=False, progress=False, batch_sizes=(1,))
    cfg.timing.min_time = 0.05
    doc = run_bench(cfg, log=lambda msg: None)
    test = load_splits_cached(data, 0, warm_home).test
    (rec,) = doc["records"]
    assert rec["status"] == "ok", rec["reason"]
    acc = rec["accuracy"]
    assert set(acc["per_signer"]) == set(test.signers) and len(set(test.signers)) == 3
    assert sum(v["n"] for v in acc["per_signer"].values()) == len(test) == acc["n"]
    worst = min(acc["per_signer"], key=lambda s: (acc["per_signer"][s]["top1"], s))
    assert acc["worst_signer"] == worst and acc["worst_signer_top1"] == acc["per_signer"][worst]["top1"]
    lo, hi = acc["top1_signer_ci"]
    assert lo <= acc["top1"] <= hi
    (flat,) = flat_records(doc)
    assert flat["worst_signer"] == worst and flat["accuracy_signers"] == 3
    assert flat["accuracy_worst_signer_top1"] == acc["worst_signer_top1"]
    assert (flat["accuracy_top1_signer_ci_lo"], flat["accuracy_top1_signer_ci_hi"]) == (lo, hi)
    narrow = report.comparison_table([flat])
    assert "worst signer" in narrow.splitlines()[0]
    md = next(p for p in map(str, doc["outputs"]) if p.endswith("-table.md"))
    text = open(md).read()
    assert "worst signer" in text and f"({worst})" in text
