"""`report --compare A B`: two sets of bench runs compared as distributions (ratio of medians, block bootstrap)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from signflow_zoo import report
from signflow_zoo.cli.commands import main
from signflow_zoo.results.records import BenchDocument, BenchRecord
from signflow_zoo.report import ReportError
from signflow_zoo.report.compare import verdict
from signflow_zoo.results.files import read_result, write_result
from signflow_zoo.results.latency import summarize

CLASS_A = "intel-f6m167-amx-2cpu"
CLASS_B = "amd-f25m1-avx512-8cpu"


def make_doc(path: Path | str, seed: int, scale: float = 1.0, median_ms: float = 2.0, blocks: int = 20,
             calls: int = 50, presets=("baseline",), backends=("torch-eager", "onnx-cpu"), batches=(1,),
             host: str = "box-1", host_class: str = CLASS_A, commit: str = "abc1234", reference_ms: float = 4.0,
             created: str = "2026-11-26T10:00:00Z", samples: bool = True, normalized: bool = True) -> Path:
    """A result file with synthetic per-call samples: ``blocks`` x ``calls`` lognormal latencies around
    ``median_ms * scale`` per cell (onnx-cpu half of torch-eager), written by the project's own writer."""
    rng = np.random.default_rng(seed)
    inv = uuid.uuid4().hex[:12]
    records = []
    for preset in presets:
        for backend in backends:
            rec = BenchRecord(result_id=f"{inv}-{preset}-{backend}", preset=preset, backend=backend)
            for b in batches:
                center = median_ms * scale * b * (0.5 if backend == "onnx-cpu" else 1.0)
                ms = [list(center * rng.lognormal(0.0, 0.15, size=calls)) for _ in range(blocks)]
                rec.latency[b] = summarize([[int(v * 1e6) for v in blk] for blk in ms], b)
                if samples:
                    rec.samples[b] = [[float(v) for v in blk] for blk in ms]
                if normalized:
                    rec.normalized_p50[b] = rec.latency[b].p50_ms / reference_ms
            records.append(rec)
    doc = BenchDocument(invocation_id=inv, created=created,
                        environment={"host": host, "host_class": host_class, "git_commit": commit},
                        config={"batch_sizes": list(batches)}, records=records, result_file=str(path))
    return write_result(doc)


def _rows(a, b, **kw) -> dict[tuple[str, str, int], dict]:
    data = json.loads(report.compare_runs(str(a), str(b), fmt="json", **kw))
    return {(r["preset"], r["backend"], r["batch"]): r for r in data}


# -- the statistic on files ------------------------------------------------------------------------------


def test_two_draws_of_one_distribution_are_indistinguishable(tmp_path):
    a, b = make_doc(tmp_path / "a.json", seed=1), make_doc(tmp_path / "b.json", seed=2)
    rows = _rows(a, b)
    assert set(rows) == {("baseline", "torch-eager", 1), ("baseline", "onnx-cpu", 1)}
    for r in rows.values():
        assert r["verdict"] == "indistinguishable", r
        assert r["ci_lo"] <= 1.0 <= r["ci_hi"] and r["ci_lo"] <= r["ratio"] <= r["ci_hi"]
        assert r["basis"] == "ms" and r["blocks_a"] == r["blocks_b"] == 20 and r["calls_a"] == 1000
        assert r["runs_a"] == r["runs_b"] == 1


@pytest.mark.parametrize("scale,verdict", [(1.3, "slower"), (1 / 1.3, "faster")])
def test_a_copy_30_percent_slower_or_faster_is_told_apart(tmp_path, scale, verdict):
    a, b = make_doc(tmp_path / "a.json", seed=1), make_doc(tmp_path / "b.json", seed=2, scale=scale)
    for r in _rows(a, b).values():
        assert r["verdict"] == verdict, r
        assert r["ratio"] == pytest.approx(scale, rel=0.05)
        if verdict == "slower":
            assert r["ci_lo"] > 1.0
        else:
            assert r["ci_hi"] < 1.0


def test_the_practical_threshold_keeps_a_small_but_real_difference_indistinguishable(tmp_path):
    a = make_doc(tmp_path / "a.json", seed=1, blocks=60, calls=200)
    b = make_doc(tmp_path / "b.json", seed=2, blocks=60, calls=200, scale=1.015)
    strict, lax = _rows(a, b, threshold=0.0), _rows(a, b)
    key = ("baseline", "torch-eager", 1)
    assert strict[key]["ci_lo"] > 1.0 and strict[key]["verdict"] == "slower"  # real: the interval excludes 1 ...
    assert lax[key]["verdict"] == "indistinguishable"  # ... but within the default threshold
    assert verdict(1.5, 1.2, 1.8) == "slower"
    assert verdict(1.01, 1.005, 1.02) == "indistinguishable"
    assert verdict(0.7, 0.6, 0.8) == "faster"
    assert verdict(1.1, None, None) == "no interval"


def test_terminal_table_states_sides_test_and_rule(tmp_path):
    a, b = make_doc(tmp_path / "a.json", seed=1), make_doc(tmp_path / "b.json", seed=2, scale=1.3)
    text = report.compare_runs(str(a), str(b))
    assert "A = " in text and "B = " in text and CLASS_A in text and "commit abc1234" in text
    assert "bootstrap of the ratio of medians, runs then blocks resampled, 1000 resamples" in text
    assert "slower when the interval lies above 1 and B/A > 1.1" in text  # one run a side: the 10% threshold
    assert "one run on side A and B" in text
    assert "95% interval" in text and "B/A" in text and "slower" in text
    md = report.compare_runs(str(a), str(b), fmt="markdown")
    assert "| preset" in md and "|---" in md.replace(":", "-")
    rows = list(csv.DictReader(io.StringIO(report.compare_runs(str(a), str(b), fmt="csv"))))
    assert {r["verdict"] for r in rows} == {"slower"} and float(rows[0]["ratio"]) > 1


def test_different_host_classes_compare_normalized_values_only(tmp_path):
    # B's machine is 5x slower in milliseconds, and so is its reference workload: normalized values agree
    a = make_doc(tmp_path / "a.json", seed=1, host="fast", host_class=CLASS_A, reference_ms=4.0)
    b = make_doc(tmp_path / "b.json", seed=2, host="slow", host_class=CLASS_B, scale=5.0, reference_ms=20.0)
    rows = _rows(a, b)
    for r in rows.values():
        assert r["basis"] == "normalized" and r["verdict"] == "indistinguishable", r
        assert r["ratio"] == pytest.approx(1.0, abs=0.05)
    text = report.compare_runs(str(a), str(b))
    assert "host classes differ" in text and "NORMALIZED" in text and CLASS_B in text
    # the same files compared in milliseconds: 5x slower
    ms = _rows(a, b, normalize=False)
    assert all(r["verdict"] == "slower" and r["ratio"] == pytest.approx(5.0, rel=0.05) for r in ms.values())


def test_across_classes_a_row_without_a_normalized_value_is_not_comparable(tmp_path):
    a = make_doc(tmp_path / "a.json", seed=1, host_class=CLASS_A)
    b = make_doc(tmp_path / "b.json", seed=2, host_class=CLASS_B, normalized=False)
    rows = _rows(a, b)
    assert {r["verdict"] for r in rows.values()} == {"not comparable"}
    assert all(r["ratio"] is None for r in rows.values())
    assert "cannot be compared across host classes" in report.compare_runs(str(a), str(b))


def test_files_without_samples_give_the_ratio_of_p50s_and_no_interval(tmp_path):
    a = make_doc(tmp_path / "a.json", seed=1, samples=False)
    b = make_doc(tmp_path / "b.json", seed=2, scale=1.3)
    rows = _rows(a, b)
    for r in rows.values():
        assert r["verdict"] == "no interval" and r["ci_lo"] is None and r["ratio"] == pytest.approx(1.3, rel=0.05)
    assert "no per-call samples" in report.compare_runs(str(a), str(b))


def test_a_schema1_file_without_samples_still_compares(tmp_path):
    old = Path(__file__).parent / "data" / "bench-schema1.json"
    doc = read_result(old)
    text = report.compare_runs(str(old), str(old))
    assert "no interval" in text and "same bench invocation is on both sides" in text
    assert doc["records"]


def test_cells_on_one_side_only_are_named_and_no_common_cell_is_an_error(tmp_path):
    a = make_doc(tmp_path / "a.json", seed=1, batches=(1, 8))
    b = make_doc(tmp_path / "b.json", seed=2, batches=(1,))
    text = report.compare_runs(str(a), str(b))
    assert "A only: baseline/onnx-cpu b8, baseline/torch-eager b8" in text
    c = make_doc(tmp_path / "c.json", seed=3, presets=("large",))
    with pytest.raises(ReportError, match="no preset/backend/batch is measured on both sides"):
        report.compare_runs(str(a), str(c))
    only_onnx = _rows(a, b, backend="onnx-cpu")
    assert set(only_onnx) == {("baseline", "onnx-cpu", 1)}


def test_unreadable_and_missing_files_and_bad_specs_are_report_errors(tmp_path):
    a = make_doc(tmp_path / "a.json", seed=1)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match="cannot read result file"):
        report.compare_runs(str(a), str(bad))
    with pytest.raises(ReportError, match="no result file"):
        report.compare_runs(str(a), str(tmp_path / "missing.json"))
    with pytest.raises(ReportError, match="commit:SHA, host:NAME"):
        report.compare_runs(str(a), "colour:blue")
    with pytest.raises(ReportError, match="threshold"):
        report.compare_runs(str(a), str(a), threshold=-1)
    with pytest.raises(ReportError, match="until:"):
        report.compare_runs(str(a), "until:yesterday-ish")


# -- selection among many files -------------------------------------------------------------------------


@pytest.fixture
def results_folder(isolated_home) -> Path:
    folder = isolated_home / "results"
    folder.mkdir(parents=True)
    make_doc(folder / "bench-1.json", seed=1, commit="aaa1111", host="box-1", created="2026-11-20T10:00:00Z")
    make_doc(folder / "bench-2.json", seed=2, commit="aaa1111", host="box-2", created="2026-11-21T10:00:00Z")
    make_doc(folder / "bench-3.json", seed=3, commit="bbb2222", host="box-1", scale=1.3,
             created="2026-11-22T10:00:00Z")
    make_doc(folder / "bench-4.json", seed=4, commit="bbb2222", host="box-2", scale=1.3,
             created="2026-11-23T10:00:00Z")
    (folder / "bench-5-table.md").write_text("not a result")
    return folder


def test_select_by_commit_host_and_time_pools_blocks(results_folder):
    side = report.select_side("commit:aaa1111")
    assert sorted(Path(d.source).name for d in side.docs) == ["bench-1.json", "bench-2.json"]
    assert len(report.select_side("commit:aaa1111bcdef0123").docs) == 2  # a full SHA matches the short one stored
    assert sorted(Path(d.source).name for d in report.select_side("host:box-1").docs) == ["bench-1.json", "bench-3.json"]
    assert len(report.select_side(f"host:{CLASS_A}").docs) == 4  # a host class selects too
    both = report.select_side("commit:bbb2222,host:box-2")
    assert [Path(d.source).name for d in both.docs] == ["bench-4.json"]
    window = report.select_side("since:2026-11-21,until:2026-11-22T12:00")
    assert [Path(d.source).name for d in window.docs] == ["bench-2.json", "bench-3.json"]

    rows = _rows("commit:aaa1111", "commit:bbb2222")
    for r in rows.values():
        assert r["runs_a"] == r["runs_b"] == 2 and r["blocks_a"] == r["blocks_b"] == 40  # blocks kept as blocks
        assert r["verdict"] == "slower" and r["ci_lo"] > 1.0


def test_a_side_that_matches_nothing_says_what_was_searched(results_folder):
    with pytest.raises(ReportError) as err:
        report.select_side("commit:ccc3333")
    msg = str(err.value)
    assert "matches no bench result" in msg and "4 result files in" in msg and str(results_folder) in msg
    assert "MLflow store" in msg and "--all-runs" in msg


def test_cli_compares_two_files(tmp_path, capsys):
    a, b = make_doc(tmp_path / "a.json", seed=1), make_doc(tmp_path / "b.json", seed=2, scale=1.3)
    assert main(["report", "--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "slower" in out and "95% interval" in out
    assert main(["report", "--compare", str(a), str(b), "--format", "json", "--threshold", "0.5"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["verdict"] for r in rows} == {"indistinguishable"} and rows[0]["threshold"] == 0.5


@pytest.mark.parametrize("argv,match", [
    (["--compare", "commit:nothing-here", "commit:nor-here"], "matches no bench result"),
    (["--compare", "a.json"], "two sides"),
    (["--compare", "x.json", "y.json", "z.json"], "two sides"),
    (["--compare", "commit:a", "commit:b", "--since", "7d"], "put filters into each side"),
    (["--compare", "baseline,large", "--compare-presets", "baseline,large"], "not both"),
])
def test_cli_errors_are_one_line_exit_2(argv, match, capsys, isolated_home):
    assert main(["report", *argv]) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and match in err, err
    assert not out


# -- through a real MLflow store --------------------------------------------------------------------------


@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_sides_from_mlflow_run_ids_and_filters(tmp_path, monkeypatch, capsys):
    """A result uploaded the way bench uploads it, then compared by its parent run id, a child run id and a
    filter, with the local file gone: the result JSON comes back as the parent run's artifact."""
    from signflow_zoo.results.files import upload
    from signflow_zoo.results.tracking import Tracker

    # mlflow.set_tracking_uri() elsewhere in the session would win over the environment variable
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None, raising=False)
    a = make_doc(tmp_path / "a.json", seed=1)
    path = make_doc(tmp_path / "uploaded" / "bench-up.json", seed=2, scale=1.3, commit="fff9999",
                    presets=("baseline", "large"))
    doc = read_result(path)
    assert upload(doc, path, Tracker("signflow-zoo", quiet=True))
    parent = doc["tracking"]["parent_run_id"]
    child = next(r["run_id"] for r in doc["records"] if r["backend"] == "onnx-cpu")
    path.unlink()  # only MLflow holds it now

    rows = _rows(a, parent)
    assert set(rows) == {("baseline", "torch-eager", 1), ("baseline", "onnx-cpu", 1)}
    assert all(r["verdict"] == "slower" for r in rows.values())
    assert set(_rows(a, f"run:{child}")) == {("baseline", "onnx-cpu", 1)}  # a child run: that record only
    assert all(r["verdict"] == "slower" for r in _rows(a, "commit:fff9999").values())
    assert "MLflow run " + parent in report.compare_runs(str(a), "commit:fff9999")

    assert main(["report", "--compare", str(a), parent]) == 0
    assert "slower" in capsys.readouterr().out
    # one value with a comma is still the preset-vs-preset table, now also spelled --compare-presets
    for argv in (["--compare", "baseline,large"], ["--compare-presets", "baseline,large"]):
        assert main(["report", *argv]) == 0
        out = capsys.readouterr().out
        assert "gain/cost" in out and "p50 latency b1, torch-eager" in out

    assert main(["report", "--compare", str(a), "0" * 32]) == 2
    err = capsys.readouterr().err
    assert "no MLflow run" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_several_runs_a_side_put_the_run_to_run_spread_into_the_interval(tmp_path):
    """Runs that differ as back-to-back runs of one host do (each run's machine state shifts all its calls):
    one run a side reads that shift as a confident change; several runs a side, resampled as runs, do not."""
    shifts_a, shifts_b = (1.0, 1.12, 0.95), (1.08, 0.93, 1.03)
    a = [make_doc(tmp_path / f"a{i}.json", seed=10 + i, scale=s) for i, s in enumerate(shifts_a)]
    b = [make_doc(tmp_path / f"b{i}.json", seed=20 + i, scale=s) for i, s in enumerate(shifts_b)]
    from signflow_zoo.report.compare import Side, SourceDoc, compare_sides, runs_ratio_ci
    from signflow_zoo.results.records import BenchDocument

    def side(paths, label):
        return Side(label, [SourceDoc(BenchDocument.from_dict(json.loads(p.read_text())), str(p)) for p in paths])

    one = compare_sides(side(a[1:2], "a1"), side(b[1:2], "b1"), threshold=0.0)
    key = next(r for r in one.rows if r.backend == "torch-eager" and r.batch == 1)
    assert key.ci[1] < 1.0  # 0.93 / 1.12: within-run intervals alone call it a change ...
    many = compare_sides(side(a, "a"), side(b, "b"))
    for r in many.rows:
        assert r.ci[0] <= 1.0 <= r.ci[1] and r.verdict == "indistinguishable", (r.backend, r.batch, r.ci)
    assert many.threshold == 0.02 and one.threshold == 0.0
    # one run a side: the two-level bootstrap is the block bootstrap
    blocks = [[1.0, 1.1], [0.9, 1.2], [1.05]]
    p1, lo1, hi1 = runs_ratio_ci([blocks], [blocks])
    assert p1 == 1.0 and lo1 <= 1.0 <= hi1
