"""Tables and plots from bench records kept in a real (SQLite) MLflow store."""

from __future__ import annotations

import argparse
import csv
import io
import json
import socket
import time

import numpy as np
import pytest

from signflow_zoo import report
from signflow_zoo.cli.report import register
from signflow_zoo.common.errors import SignFlowError, TrackingError
from signflow_zoo.report import ReportError

PRESETS = ("baseline", "large")
BACKENDS = ("torch-eager", "onnx-cpu", "onnx-cuda")
HOSTS = ("cpu-box", "gpu-box")
PARAMS = {"baseline": 2.55e6, "large": 12.5e6}
ACC = {"baseline": 0.80, "large": 0.85}
# p50 at batch 1 on each host; batch 32 is 8x that. onnx-cuda is unavailable on cpu-box.
P50 = {
    ("baseline", "torch-eager", "cpu-box"): 4.0, ("baseline", "onnx-cpu", "cpu-box"): 2.0,
    ("large", "torch-eager", "cpu-box"): 16.0, ("large", "onnx-cpu", "cpu-box"): 10.0,
    ("baseline", "torch-eager", "gpu-box"): 1.0, ("baseline", "onnx-cpu", "gpu-box"): 1.5,
    ("baseline", "onnx-cuda", "gpu-box"): 0.5, ("large", "torch-eager", "gpu-box"): 1.2,
    ("large", "onnx-cpu", "gpu-box"): 6.0, ("large", "onnx-cuda", "gpu-box"): 0.4,
}
STRING_KEYS = ("preset", "backend", "plugin", "provider", "precision", "status", "reason", "host", "cpu", "gpu",
               "threads", "batch_sizes", "exporter", "opset", "artifact_sha256", "invocation_id", "result_id", "created")
CUDA_REASON = "CUDAExecutionProvider is not available: ONNX Runtime bound CPUExecutionProvider after session creation"


def flat_record(preset, backend, host, invocation="inv-new", p50_override=None):
    """A flat record as the bench builds it in memory (numbers as numbers, no start_time)."""
    rec = {
        "preset": preset, "backend": backend, "host": host, "plugin": "signflow_zoo.backends.builtin",
        "provider": "", "precision": "fp32", "status": "ok", "reason": "", "cpu": "EPYC", "gpu": "",
        "threads": "2", "batch_sizes": "1,32", "exporter": "legacy", "opset": "17", "artifact_sha256": "abc",
        "invocation_id": f"{invocation}-{host}", "result_id": f"{invocation}-{host}-{preset}-{backend}",
        "created": "2026-11-26T10:00:00Z",
        "num_params": PARAMS[preset], "d_model": {"baseline": 192, "large": 384}[preset],
        "heads": {"baseline": 6, "large": 8}[preset], "layers": {"baseline": 4, "large": 6}[preset],
        "dim_ff": {"baseline": 768, "large": 1536}[preset],
        "train_seconds": {"baseline": 60.0, "large": 300.0}[preset],
    }
    p50 = p50_override if p50_override is not None else P50.get((preset, backend, host))
    if p50 is None:
        rec.update(status="unavailable", reason=CUDA_REASON)
        return rec
    if preset == "large" and backend == "onnx-cuda":
        rec.update(status="parity-failed", reason="max abs error 0.02 > tolerance 0.001 for fp32")
    rec.update(accuracy_top1=ACC[preset], accuracy_top5=0.97, agreement_top1=0.999, parity_max_abs=2e-6,
               parity_max_rel=1e-5, parity_top1_agreement=1.0, parity_ok=1.0, memory_mb=300.0)
    for b, scale in ((1, 1.0), (32, 8.0)):
        v = p50 * scale
        noisy = preset == "large" and backend == "onnx-cpu" and host == "cpu-box" and b == 32
        rec.update({f"latency_p50_ms_b{b}": v, f"latency_p90_ms_b{b}": v * 1.1, f"latency_p99_ms_b{b}": v * 1.3,
                    f"latency_mean_ms_b{b}": v * 1.02, f"latency_stdev_ms_b{b}": v * 0.05,
                    f"latency_cv_b{b}": 0.4 if noisy else 0.05, f"throughput_seq_s_b{b}": b * 1000.0 / v,
                    f"noisy_b{b}": 1.0 if noisy else 0.0, f"iterations_b{b}": 100.0})
    return rec


def _use_store(mp, uri):
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    # mlflow.set_tracking_uri() elsewhere in the session would win over the environment variable.
    mp.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None, raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite MLflow store with 2 presets x 3 backends x 2 hosts, plus one older duplicate run."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        _use_store(mp, uri)
        client = MlflowClient()
        exp = client.create_experiment("signflow-zoo")
        now = int(time.time() * 1000)

        def log(rec, parent, start):
            tags = {"signflow_zoo.kind": "bench-record", "signflow_zoo.result_id": rec["result_id"],
                    "signflow_zoo.invocation_id": rec["invocation_id"], "mlflow.parentRunId": parent,
                    **{k: rec[k] for k in ("preset", "backend", "host", "status")}}
            run = client.create_run(exp, start_time=start, tags=tags, run_name=f"{rec['preset']}/{rec['backend']}")
            now_ms = int(time.time() * 1000)
            client.log_batch(run.info.run_id,
                             params=[Param(k, str(v)) for k, v in rec.items() if k in STRING_KEYS],
                             metrics=[Metric(k, float(v), now_ms, 0) for k, v in rec.items() if k not in STRING_KEYS])
            client.set_terminated(run.info.run_id)

        def parent_run(inv, host, start):
            run = client.create_run(exp, start_time=start, tags={"signflow_zoo.kind": "bench-invocation",
                                                                 "signflow_zoo.invocation_id": f"{inv}-{host}"})
            return run.info.run_id

        old_start = now - 10 * 86_400_000
        old_parent = parent_run("inv-old", "cpu-box", old_start)
        log(flat_record("baseline", "onnx-cpu", "cpu-box", invocation="inv-old", p50_override=3.0), old_parent, old_start)
        for i, host in enumerate(HOSTS):
            start = now - 3_600_000 + i * 1000
            parent = parent_run("inv-new", host, start)
            for preset in PRESETS:
                for backend in BACKENDS:
                    log(flat_record(preset, backend, host), parent, start + 10)
        yield {"uri": uri, "tmp": tmp}


@pytest.fixture
def tracking(store, monkeypatch):
    _use_store(monkeypatch, store["uri"])
    return store


@pytest.fixture
def records(tracking):
    return report.collect_records()


def find(rows, **match):
    out = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(out) == 1, (match, out)
    return out[0]


# -- collect_records ---------------------------------------------------------------------------------


def test_collect_keeps_newest_per_preset_backend_host(records, tracking):
    assert len(records) == 12
    rec = find(records, preset="baseline", backend="onnx-cpu", host="cpu-box")
    assert rec["latency_p50_ms_b1"] == 2.0  # the newer run, not the older 3.0 one
    assert isinstance(rec["start_time"], int) and rec["run_id"] and rec["parent_run_id"]
    assert rec["batch_sizes"] == "1,32" and rec["status"] == "ok"
    assert all(r["start_time"] >= records[-1]["start_time"] for r in records)  # newest first

    every = report.collect_records(latest=False)
    assert len(every) == 13
    assert sorted(r["latency_p50_ms_b1"] for r in every
                  if (r["preset"], r["backend"], r["host"]) == ("baseline", "onnx-cpu", "cpu-box")) == [2.0, 3.0]


def test_collect_filters(tracking):
    assert {r["preset"] for r in report.collect_records(preset="large")} == {"large"}
    assert len(report.collect_records(preset="large")) == 6
    two = report.collect_records(backend="torch-eager, onnx-cpu")
    assert len(two) == 8 and {r["backend"] for r in two} == {"torch-eager", "onnx-cpu"}
    one = report.collect_records(preset="baseline", backend="onnx-cpu", host="cpu-box", latest=False)
    assert len(one) == 2
    assert len(report.collect_records(since="7d", latest=False)) == 12  # the 10-day-old run is out
    assert len(report.collect_records(since="30d", latest=False)) == 13
    assert report.collect_records(host="nowhere") == []


def test_collect_paginates(tracking, monkeypatch):
    monkeypatch.setattr("signflow_zoo.report.records.PAGE_SIZE", 5)
    assert len(report.collect_records(latest=False)) == 13
    assert len(report.collect_records()) == 12


def test_parse_since_forms():
    from datetime import datetime, timezone

    assert report.parse_since("2026-11-01") == int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp() * 1000)
    assert abs(report.parse_since("24h") - (time.time() - 86400) * 1000) < 5000
    assert report.parse_since(None) is None
    with pytest.raises(ReportError, match="7d"):
        report.parse_since("last tuesday")


def test_report_errors_never_show_a_password(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret-pw@127.0.0.1:{port}")
    with pytest.raises(TrackingError) as err:
        report.collect_records()
    assert "s3cret-pw" not in str(err.value) and "alice:***@" in str(err.value)


def test_missing_experiment_says_run_bench(tracking):
    with pytest.raises(TrackingError, match="no bench results exist yet.*signflow-zoo bench"):
        report.collect_records(experiment="never-benched")


def test_missing_sqlite_file_and_unreachable_server(tmp_path, monkeypatch):
    _use_store(monkeypatch, f"sqlite:///{tmp_path}/absent.db")
    with pytest.raises(TrackingError, match="signflow-zoo bench"):
        report.collect_records()
    assert not (tmp_path / "absent.db").exists()  # reporting must not create a store

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable"):
        report.collect_records()
    assert time.monotonic() - t0 < 5


# -- comparison_table ------------------------------------------------------------------------------


def test_terminal_table_speedups_noise_and_status(records):
    text = report.comparison_table(records, wide=True)
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("baseline") and "onnx-cpu" in line and "cpu-box" in line)
    assert "2.00x" in row and "12.8M" not in row and "2.55M" in row  # eager 4.0 ms / onnx-cpu 2.0 ms
    large = next(line for line in lines if line.startswith("large") and "onnx-cpu" in line and "cpu-box" in line)
    assert "1.60x" in large  # b1: 16 / 10
    assert "~80.0" in large and "~1.60x" in large  # b32 is flagged noisy: latency and its speedup are marked
    assert report.NOISY_LEGEND in text
    unavailable = next(line for line in lines if "onnx-cuda" in line and "cpu-box" in line)
    assert "unavailable: CUDAExecutionProvider is not" in unavailable and CUDA_REASON not in unavailable
    assert "parity-failed: max abs error" in text
    # zoo order, then torch-eager first: baseline rows precede large rows
    presets = [line.split()[0] for line in lines[2:] if line.split() and line.split()[0] in PRESETS]
    assert presets == ["baseline"] * 6 + ["large"] * 6
    first = lines[2].split()
    assert first[:3] == ["baseline", "torch-eager", "cpu-box"]


def test_markdown_table_parses(records):
    text = report.comparison_table(records, fmt="markdown", batch_sizes=[1])
    table = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert set("-:|") >= set(table[1].replace(" ", ""))
    assert {"preset", "backend", "host", "status", "params", "p50 ms b1", "vs eager b1", "top-1"} <= set(header)
    assert "p50 ms b32" not in header
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]
    assert len(rows) == 12
    r = find(rows, preset="large", backend="onnx-cuda", host="gpu-box")
    assert r["vs eager b1"] == "3.00x" and r["top-1"] == "85.0%"


def test_csv_and_json_hold_raw_numbers(records):
    rows = list(csv.DictReader(io.StringIO(report.comparison_table(records, fmt="csv"))))
    assert len(rows) == 12
    r = find(rows, preset="baseline", backend="onnx-cpu", host="cpu-box")
    assert float(r["speedup_b1"]) == pytest.approx(2.0) and float(r["p50_ms_b32"]) == pytest.approx(16.0)
    assert find(rows, preset="large", backend="onnx-cpu", host="cpu-box")["noisy_b32"] == "True"

    data = json.loads(report.comparison_table(records, fmt="json"))
    assert len(data) == 12
    j = find(data, preset="large", backend="onnx-cpu", host="cpu-box")
    assert j["speedup_b1"] == pytest.approx(1.6) and j["noisy_b32"] is True and j["accuracy_top1"] == 0.85
    assert j["num_params"] == 12_500_000
    cuda = find(data, preset="baseline", backend="onnx-cuda", host="cpu-box")
    assert cuda["status"] == "unavailable" and cuda["reason"] == CUDA_REASON and cuda["p50_ms_b1"] is None


def test_table_from_in_memory_records_and_all_runs():
    # What the bench hands over: no start_time, numbers as ints/floats, one host.
    mem = [flat_record(p, b, "cpu-box") for p in PRESETS for b in BACKENDS]
    text = report.comparison_table(mem)
    assert "host" not in text.splitlines()[0] and "2.00x" in text
    dup = mem + [flat_record("baseline", "onnx-cpu", "cpu-box", invocation="inv-old", p50_override=3.0)]
    dup[-1]["created"] = "2026-11-01T10:00:00Z"
    text = report.comparison_table(dup)
    assert "created" in text.splitlines()[0] and "2.00x" in text and "1.33x" in text
    with pytest.raises(ReportError, match="format"):
        report.comparison_table(mem, fmt="html")


# -- compare_presets_table -------------------------------------------------------------------------


def test_compare_presets_gain_column(records):
    one_host = [r for r in records if r["host"] == "cpu-box"]
    text = report.compare_presets_table(one_host, "baseline", "large", fmt="markdown")
    table = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["metric", "baseline", "large", "gain/cost"]
    rows = {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in table[2:])}
    assert rows["params"][1:] == ["2.55M", "12.5M", "4.90x"]
    assert rows["d_model"][3] == "2.00x" and rows["layers"][3] == "1.50x"
    assert rows["training time"][1:] == ["60.0 s", "5.0 min", "5.00x"]
    assert rows["top-1 accuracy"][1:] == ["80.0%", "85.0%", "+5.0 pts"]
    assert rows["p50 latency b1, torch-eager"][1:] == ["4.00 ms", "16.0 ms", "4.00x"]
    assert rows["p50 latency b1, onnx-cpu"][3] == "5.00x"
    assert not any("onnx-cuda" in k for k in rows)  # no latency there on this host

    both = json.loads(report.compare_presets_table(records, "baseline", "large", fmt="json"))
    lat = {r["metric"]: r for r in both}
    assert lat["p50 latency b1, onnx-cuda @ gpu-box"]["gain/cost"] == pytest.approx(0.8)
    assert lat["top-1 accuracy"]["gain/cost"] == pytest.approx(5.0)


def test_compare_presets_missing_preset(records):
    with pytest.raises(ReportError, match="'xlarge'.*signflow-zoo bench --preset xlarge"):
        report.compare_presets_table(records, "baseline", "xlarge")


# -- plots -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "points, front",
    [
        ([], []),
        ([(1.0, 50.0)], [0]),
        ([(4.0, 80.0), (2.0, 80.0), (16.0, 85.0), (10.0, 85.0)], [1, 3]),  # equal accuracy: the faster wins
        ([(1.0, 60.0), (2.0, 70.0), (3.0, 65.0), (4.0, 90.0), (0.5, 10.0)], [4, 0, 1, 3]),
        ([(2.0, 70.0), (2.0, 75.0)], [1]),  # same latency: the more accurate wins
        ([(1.0, 70.0), (1.0, 70.0), (3.0, 60.0)], [0, 1]),  # identical points are both kept
    ],
)
def test_pareto_front(points, front):
    assert report.pareto_front(points) == front


def _check_png(path, min_kb=10):
    from matplotlib.image import imread

    assert path.exists() and path.stat().st_size > min_kb * 1024
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300 and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.05  # not a blank canvas
    return img


def test_plot_pareto(records, tmp_path):
    one_host = [r for r in records if r["host"] == "cpu-box"]
    path = report.plot_pareto(one_host, tmp_path / "pareto.png")
    _check_png(path)
    wide = _check_png(report.plot_pareto(records, tmp_path / "pareto_hosts", batch_size=32))  # two panels
    assert wide.shape[1] > _check_png(path).shape[1]
    with pytest.raises(ReportError, match="batch sizes 1, 32"):
        report.plot_pareto(records, tmp_path / "none.png", batch_size=8)


def test_plot_latency_distributions(tmp_path):
    rng = np.random.default_rng(0)
    samples = {
        "large / torch-eager / b1": list(rng.lognormal(np.log(16.0), 0.08, 200)),
        "large / onnx-cpu / b1": list(rng.lognormal(np.log(10.0), 0.3, 200)),
        "large / onnx-cuda / b1": list(rng.lognormal(np.log(0.4), 0.1, 200)),
        "empty": [],
    }
    _check_png(report.plot_latency_distributions(samples, tmp_path / "latency.png", title="large, batch 1"))
    with pytest.raises(ReportError):
        report.plot_latency_distributions({"a": []}, tmp_path / "x.png")


@pytest.mark.parametrize("n", [20, 100])
def test_plot_confusion(tmp_path, n):
    rng = np.random.default_rng(n)
    cm = np.diag(rng.integers(20, 40, n)) + rng.integers(0, 3, (n, n))
    labels = [f"sign_{i:03d}" for i in range(n)]
    _check_png(report.plot_confusion(cm, labels, tmp_path / f"confusion_{n}.png"))
    with pytest.raises(ReportError, match="one per class"):
        report.plot_confusion(cm, labels[:-1], tmp_path / "bad.png")


def test_write_report(records, tmp_path):
    out = report.write_report(records, tmp_path / "report", "png",
                              samples={"baseline / onnx-cpu / b1": [2.0, 2.1, 2.2, 1.9, 2.5]})
    assert set(out) == {"table_markdown", "table_csv", "pareto", "latency"}
    assert out["table_markdown"].read_text().startswith("| preset")
    assert len(list(csv.DictReader(out["table_csv"].open()))) == 12
    unavailable_only = [r for r in records if r["status"] == "unavailable"]
    assert set(report.write_report(unavailable_only, tmp_path / "r2", "svg")) == {"table_markdown", "table_csv"}


# -- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    parser = argparse.ArgumentParser(prog="signflow-zoo")
    register(parser.add_subparsers(dest="command", required=True))

    def run(*argv):
        args = parser.parse_args(["report", *argv])
        return args.func(args)

    return run


def test_cli_report_end_to_end(tracking, cli, capsys, tmp_path):
    assert cli("--format", "json", "--host", "cpu-box") == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 6 and {r["host"] for r in data} == {"cpu-box"}

    assert cli("--all-runs", "--preset", "baseline", "--backend", "onnx-cpu", "--format", "csv") == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 3

    assert cli("--compare", "baseline,large", "--host", "cpu-box") == 0
    out = capsys.readouterr().out
    assert "gain/cost" in out and "4.90x" in out

    assert cli("--plots", str(tmp_path / "plots"), "--since", "7d") == 0
    out = capsys.readouterr().out
    assert "vs eager" in out and "vs eager b1" not in out and "pareto_b1.png" in out
    assert max(len(line) for line in out.splitlines()) <= report.TERMINAL_WIDTH
    _check_png(tmp_path / "plots" / "pareto_b1.png")

    assert cli("--wide") == 0  # the full table: the previous columns, one row per preset and backend
    out = capsys.readouterr().out
    header = {h.strip() for h in out.splitlines()[0].split("  ")}
    assert {"p50 ms b1", "p99 ms b1", "seq/s b1", "vs eager b1", "p50 ms b32", "params", "mem MB"} <= header
    assert "unavailable: CUDAExecutionProvider is not" in out


def test_cli_report_user_errors(tracking, cli):
    with pytest.raises(ReportError, match="two presets"):
        cli("--compare", "baseline")
    with pytest.raises(ReportError, match="presets with results: baseline, large"):
        cli("--preset", "xlarge")
    with pytest.raises(TrackingError, match="signflow-zoo bench"):
        cli("--experiment", "elsewhere")
    with pytest.raises(SignFlowError):
        cli("--since", "yesterday-ish")
    with pytest.raises(SignFlowError, match="reaches back more than 36500 days"):
        cli("--since", "1000000d")


def test_plots_into_a_file_fail_before_reading_and_in_the_library(tracking, cli, records, tmp_path):
    a_file = tmp_path / "plots"
    a_file.write_text("not a folder")
    with pytest.raises(SignFlowError, match="--plots.*is a file, not a folder"):
        cli("--plots", str(a_file))
    with pytest.raises(ReportError, match="cannot write the plot"):
        report.plot_pareto(records, a_file / "p.png")
    assert a_file.read_text() == "not a folder"


def test_pareto_front_with_intervals_ignores_a_one_clip_edge():
    from signflow_zoo.model.metrics import wilson_interval

    # 320 held-out clips: 249 vs 250 correct is one clip, not a difference
    pts = [(5.0, 100 * 249 / 320), (8.0, 100 * 250 / 320), (20.0, 100 * 300 / 320)]
    cis = [tuple(100 * v for v in wilson_interval(k, 320)) for k in (249, 250, 300)]
    assert report.pareto_front(pts) == [0, 1, 2]  # point estimates alone: the one-clip edge wins a place
    assert report.pareto_front(pts, cis) == [0, 2]  # with intervals it does not; a real gain still does


def test_pareto_plot_draws_intervals(tmp_path, records):
    recs = [dict(r, accuracy_top1_ci_lo=r["accuracy_top1"] - 0.04, accuracy_top1_ci_hi=r["accuracy_top1"] + 0.04)
            for r in records if r.get("accuracy_top1") is not None]
    path = report.plot_pareto(recs, tmp_path / "p.png")
    assert path.is_file() and path.stat().st_size > 10_000


def test_pareto_plot_takes_a_perfect_score_whose_interval_ends_a_hair_below_it(tmp_path, records):
    # what the bench stored for 320/320 clips before the interval was clamped: hi = 1 - 1e-16 < top-1 = 1.0
    recs = [dict(r, accuracy_top1=1.0, accuracy_top1_ci_lo=0.9881374103882884, accuracy_top1_ci_hi=0.9999999999999999)
            for r in records if r.get("accuracy_top1") is not None]
    assert report.plot_pareto(recs, tmp_path / "p.png").is_file()


def test_table_says_which_data_and_split_each_result_used(records):
    recs = [dict(r, data="lsfb:/data/lsfb", data_split="lsfb-official:train/test, val=fold_4") for r in records[:3]]
    recs += [dict(r, data="synthetic:classes=20", data_split="signer-split(seed=0, val=0.15, test=0.15)")
             for r in records[3:]]
    text = report.comparison_table(recs)
    assert "data: lsfb:/data/lsfb; split: lsfb-official:train/test, val=fold_4 (3 rows)" in text
    assert "split: signer-split(seed=0, val=0.15, test=0.15)" in text


def test_table_shows_roofline_share_and_accuracy_change_against_eager():
    base = {"preset": "large", "host": "h", "invocation_id": "i1", "status": "ok", "started_ms": 1}
    recs = [dict(base, backend="torch-eager", accuracy_top1=0.819, latency_p50_ms_b1=12.0, roofline_share_b1=0.052),
            dict(base, backend="openvino-int8", accuracy_top1=0.822, latency_p50_ms_b1=2.0, roofline_share_b1=0.081),
            dict(base, backend="onnx-int8", accuracy_top1=0.816, latency_p50_ms_b1=2.5)]
    text = report.comparison_table(recs, fmt="markdown")
    assert "roof b1" in text and "Δ top-1" in text and "measured matmul ceiling" in text
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| large")}
    assert " 5% |" in rows["torch-eager"] and " 8% |" in rows["openvino-int8"]
    assert "+0.3" in rows["openvino-int8"] and "-0.3" in rows["onnx-int8"]
    raw = {r["backend"]: r for r in json.loads(report.comparison_table(recs, fmt="json"))}
    assert raw["openvino-int8"]["accuracy_change"] == pytest.approx(0.003)
    assert raw["openvino-int8"]["roofline_share_b1"] == pytest.approx(0.081)
    assert raw["onnx-int8"]["roofline_share_b1"] is None


def test_a_p99_is_shown_only_where_the_call_count_supports_it():
    short = flat_record("baseline", "onnx-cpu", "cpu-box")  # 100 calls: too few for a p99
    long = flat_record("baseline", "torch-eager", "cpu-box")
    long.update({"iterations_b1": 600.0, "latency_p99_upper_ms_b1": 9.5})
    text = report.comparison_table([long, short], batch_sizes=[1], wide=True)
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("baseline")}
    assert "<100 calls" in rows["onnx-cpu"] and "<" not in rows["torch-eager"]
    assert "too few calls to claim a p99" in text and "459" in text
    raw = {r["backend"]: r for r in json.loads(report.comparison_table([long, short], fmt="json", batch_sizes=[1]))}
    assert raw["torch-eager"]["p99_upper_ms_b1"] == 9.5 and raw["onnx-cpu"]["p99_upper_ms_b1"] is None
    assert raw["onnx-cpu"]["n_b1"] == 100


def test_results_of_several_host_classes_are_grouped_and_labelled():
    zen3 = [flat_record("baseline", b, "box-a") for b in ("torch-eager", "onnx-cpu")]
    zen5 = [flat_record("baseline", b, "box-b") for b in ("torch-eager", "onnx-cpu")]
    for r in zen3:
        r["host_class"] = "amd-f25m1-avx2-2cpu"
    for r in zen5:
        r["host_class"] = "amd-f26m2-avx512bf16-2cpu"
    text = report.comparison_table(zen5 + zen3, wide=True)
    lines = [line for line in text.splitlines() if line.startswith("baseline")]
    assert "host class" in text.splitlines()[0]
    assert [("avx2" in line) for line in lines] == [True, True, False, False]  # grouped by class
    assert "2 host classes" in text and "milliseconds compare only within one class" in text
    assert "host class" not in report.comparison_table(zen3, wide=True).splitlines()[0]
    # the default table: one section per host, titled with its class, in class order; in a section rows go by
    # batch size, so that a column compares backends at one batch size
    measured = [dict(r, **flat_record("baseline", r["backend"], r["host"], p50_override=2.0),
                     host_class=r["host_class"]) for r in zen5 + zen3]
    text = report.comparison_table(measured)
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("host ")] == ["host box-a (amd-f25m1-avx2-2cpu)",
                                                                    "host box-b (amd-f26m2-avx512bf16-2cpu)"]
    rows = [line.split()[1:3] for line in lines if line.startswith("baseline")]
    assert rows == [["1", "torch-eager"], ["1", "onnx-cpu"], ["32", "torch-eager"], ["32", "onnx-cpu"]] * 2
    assert "host class" not in lines[1] and "2 host classes" in text


# -- the default (narrow) table and --wide ----------------------------------------------------------

OK_BACKENDS = {"torch-eager": 1.0, "onnx-cpu": 0.38, "onnx-optimized": 0.35, "onnx-int8": 0.33,
               "onnx-int8-dynamic": 0.36, "onnx-int8-static": 0.37, "openvino-fp32": 0.37, "openvino-bf16": 0.29,
               "openvino-int8": 0.27}
NO_CUDA = "this onnxruntime build (1.20.1) has no CUDAExecutionProvider; install onnxruntime-gpu instead of onnxruntime"
GPU_REASONS = {  # what a 2-core machine without a GPU says for its 7 GPU backends (of 16)
    "onnx-cuda": NO_CUDA, "onnx-fp16": NO_CUDA, "onnx-cuda-graph": NO_CUDA,
    "onnx-cuda-graph-fp16": ("ORT lists CUDAExecutionProvider but bound CPUExecutionProvider (no usable device or "
                             "driver/CUDA libraries): libcublasLt.so.12: cannot open shared object file: No such file "
                             "or directory (searched /usr/local/cuda/lib64:/opt/venv/lib/python3.12/site-packages/"
                             "nvidia/cublas/lib)"),
    "onnx-tensorrt": ("this onnxruntime build (1.20.1) has no TensorrtExecutionProvider; install onnxruntime-gpu (and "
                      "the TensorRT libraries it links)"),
    "torch-compile": ("no CUDA device; on CPU it measured 1.0-1.1x over eager for lightweight at batch 1 and 0.3-0.6x "
                      "at batch 8, after a 36-46 s compile (2 cores, 2026-11-26): set SIGNFLOW_ZOO_TORCH_COMPILE_CPU=1 "
                      "to run it on CPU anyway"),
    "torch-compile-bf16": ("no CUDA device; on CPU it measured 1.0-1.1x over eager for lightweight at batch 1 and "
                           "0.3-0.6x at batch 8, after a 36-46 s compile (2 cores, 2026-11-26): set "
                           "SIGNFLOW_ZOO_TORCH_COMPILE_CPU=1 to run it on CPU anyway"),
}
EAGER_B1 = {"lightweight": 1.56, "baseline": 4.1, "large": 16.3}
PARITY_REASON = "max abs error 0.31 > tolerance 0.05 for int8 (top-1 agreement 97.2% < 99%)"


def realistic_records():
    """One bench run on a 2-core machine without a GPU: 3 presets x 16 backends (7 unavailable), batch 1 and 32,
    intervals everywhere, a noisy cell, an invalid cell, an indistinguishable speedup and a parity failure."""
    from signflow_zoo.model.metrics import wilson_interval

    recs = []
    for preset in ("lightweight", "baseline", "large"):
        for backend in list(OK_BACKENDS) + list(GPU_REASONS):
            rec = {"preset": preset, "backend": backend, "host": "ci-2core", "host_class": "amd-f25m1-avx2-2cpu",
                   "status": "ok", "reason": "", "invocation_id": "inv-1", "created": "2026-11-26T10:00:00Z",
                   "stability_status": "stable", "num_params": {"lightweight": 0.87e6, "baseline": 2.55e6,
                                                                 "large": 12.5e6}[preset],
                   "data": "synthetic:classes=20", "data_split": "signer-split(seed=0, val=0.15, test=0.15)"}
            if backend in GPU_REASONS:
                rec.update(status="unavailable", reason=GPU_REASONS[backend])
                recs.append(rec)
                continue
            correct = {"lightweight": 300, "baseline": 305, "large": 311}[preset] - (backend == "onnx-int8")
            lo, hi = wilson_interval(correct, 320)
            rec.update(accuracy_top1=correct / 320, accuracy_top1_ci_lo=lo, accuracy_top1_ci_hi=hi,
                       agreement_top1=0.997, parity_max_abs=2e-6, memory_mb=190.0)
            for b in (1, 32):
                factor = OK_BACKENDS[backend]
                if (preset, backend, b) == ("large", "onnx-int8-dynamic", 32):
                    factor = 0.99  # indistinguishable from eager
                v = EAGER_B1[preset] * (13 if b == 32 else 1) * factor
                noisy = (preset, backend, b) == ("baseline", "openvino-bf16", 1)
                invalid = (preset, backend, b) == ("large", "openvino-int8", 32)
                spread = 0.09 if noisy else 0.02
                rec.update({f"latency_p50_ms_b{b}": v, f"latency_p50_ci_lo_ms_b{b}": v * (1 - spread),
                            f"latency_p50_ci_hi_ms_b{b}": v * (1 + spread), f"latency_p99_ms_b{b}": v * 1.4,
                            f"throughput_seq_s_b{b}": b * 1000 / v, f"noisy_b{b}": float(noisy),
                            f"valid_b{b}": float(not invalid), f"iterations_b{b}": 14.0 if invalid else 500.0,
                            f"roofline_share_b{b}": 0.3})
                if backend != "torch-eager":
                    ratio = 1 / factor
                    clo, chi = ratio * (0.96 if factor == 0.99 else 0.98), ratio * (1.03 if factor == 0.99 else 1.02)
                    rec.update({f"speedup_b{b}": ratio, f"speedup_ci_lo_b{b}": clo, f"speedup_ci_hi_b{b}": chi,
                                f"speedup_distinguishable_b{b}": float(not clo <= 1.0 <= chi)})
            if (preset, backend) == ("large", "onnx-int8-static"):
                rec.update(status="parity-failed", reason=PARITY_REASON)
            recs.append(rec)
    return recs


def _table_and_notes(text):
    """(the table's lines, everything below it with its line breaks undone)."""
    table, _, below = text.partition("\n\n")
    return table.splitlines(), " ".join(below.split())


def test_default_table_fits_120_columns_with_intervals_and_marks():
    text = report.comparison_table(realistic_records())
    assert max(len(line) for line in text.splitlines()) <= report.TERMINAL_WIDTH == 120
    table, below = _table_and_notes(text)
    header = [h for h in table[0].split("  ") if h.strip()]
    assert [h.strip() for h in header] == ["preset", "batch", "backend", "p50 ms", "vs eager", "top-1", "status"]
    assert len(table) == 2 + 3 * 9 * 2 + 7  # header, rule; per preset and batch size 9 measured; 7 folded lines
    rows = {tuple(line.split()[:3]): line for line in table[2:]}
    row = rows[("lightweight", "1", "onnx-cpu")]  # every number a user decides on, with its 95% interval
    assert "0.593 [0.581-0.605]" in row and "2.63x [2.58-2.68]" in row and "93.8% [91-96]" in row
    assert rows[("large", "32", "torch-eager")].split()[3:7] == ["212", "[208-216]", "1.00x", "97.2%"]
    # marks: noisy, invalid, indistinguishable, a status with its reason below
    assert "~1.19 [1.08-1.30]" in rows[("baseline", "1", "openvino-bf16")]
    assert "~3.45x" in rows[("baseline", "1", "openvino-bf16")]
    assert "?57.2 [56.1-58.4]" in rows[("large", "32", "openvino-int8")]
    assert "≈1.01x [0.97-1.04]" in rows[("large", "32", "onnx-int8-dynamic")]
    assert rows[("large", "1", "onnx-int8-static")].endswith("parity-failed [1]")
    assert f"[1] {PARITY_REASON}" in below
    for legend in (report.NOISY_LEGEND, report.SAME_LEGEND.format(ref="torch-eager"), "? = invalid",
                   "[lo-hi] = 95% intervals", "signflow-zoo report --wide"):
        assert legend in below
    # grouped by preset, then batch size: a column compares the backends at one batch size
    order = [(line.split()[0], line.split()[1]) for line in table[2:56]]
    assert order == sorted(order, key=lambda pb: (["lightweight", "baseline", "large"].index(pb[0]), int(pb[1])))
    assert table[2].split()[2] == "torch-eager" and table[11].split()[2] == "torch-eager"


def test_default_table_folds_each_unavailable_backend_into_one_line_with_its_full_reason_below():
    text = report.comparison_table(realistic_records())
    table, below = _table_and_notes(text)
    assert below.startswith("reasons (unavailable and failed rows):")
    for backend, reason in GPU_REASONS.items():
        lines = [line for line in table if backend in line.split()]
        assert len(lines) == 1, (backend, lines)  # once for 3 presets
        words = lines[0].split()
        assert words[:2] == ["all", backend] and words[2] == "unavailable" and len(words) == 4
        note = words[3]  # [n]
        assert f"{note} {reason}" in below  # the full reason, never cut (long ones wrap)
        assert reason[:30] not in "\n".join(table)
    assert below.count(NO_CUDA) == 1  # one note for the 4 backends that give the same reason

    # a failure without numbers is not folded: its own row in its preset, its reason numbered below too
    crashed = realistic_records()
    i = next(i for i, r in enumerate(crashed) if (r["preset"], r["backend"]) == ("baseline", "onnx-cpu"))
    crashed[i] = {k: v for k, v in crashed[i].items() if not k.startswith("latency_")}
    crashed[i].update(status="crashed", reason="worker exited with SIGSEGV (signal 11) during prepare")
    table, below = _table_and_notes(report.comparison_table(crashed))
    row = next(line for line in table if line.startswith("baseline") and "onnx-cpu" in line.split())
    assert row.split()[:2] == ["baseline", "onnx-cpu"] and row.split()[-2] == "crashed"
    assert f"{row.split()[-1]} worker exited with SIGSEGV (signal 11) during prepare" in below

    # one preset: the folded line names it; a backend unavailable on some presets only names those
    one = [r for r in realistic_records() if r["preset"] == "large"]
    assert next(line for line in report.comparison_table(one).splitlines() if "onnx-tensorrt" in line).startswith(
        "large ")
    some = [r for r in realistic_records() if not (r["backend"] == "onnx-tensorrt" and r["preset"] == "baseline")]
    assert next(line for line in report.comparison_table(some).splitlines() if "onnx-tensorrt" in line).startswith(
        "lightweight,large ")


def test_default_table_of_several_hosts_and_all_runs_still_fits():
    here = realistic_records()
    there = [dict(r, host="lab-gpu-07", host_class="intel-f6m143-avx512bf16-amx-8cpu", invocation_id="inv-2")
             for r in realistic_records()]
    older = [dict(r, created="2026-11-01T09:00:00Z", invocation_id="inv-0") for r in realistic_records()[:16]]
    text = report.comparison_table(here + there + older)
    assert max(len(line) for line in text.splitlines()) <= report.TERMINAL_WIDTH
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("host ")] == [
        "host ci-2core (amd-f25m1-avx2-2cpu)", "host lab-gpu-07 (intel-f6m143-avx512bf16-amx-8cpu)"]
    assert sum("onnx-tensorrt" in line.split() for line in lines) == 2  # one folded line per host
    assert "not shown, to fit 120 columns: created" in " ".join(text.split())
    wide = report.comparison_table(here + there + older, wide=True)
    assert "created" in wide.splitlines()[0] and "host class" in wide.splitlines()[0]


def test_wide_table_and_markdown_keep_the_previous_columns():
    recs = realistic_records()
    text = report.comparison_table(recs, wide=True)
    header = [h.strip() for h in text.splitlines()[0].split("  ") if h.strip()]
    assert header == ["preset", "backend", "status", "params", "p50 ms b1", "p99 ms b1", "seq/s b1", "vs eager b1",
                      "roof b1", "p50 ms b32", "p99 ms b32", "seq/s b32", "vs eager b32", "roof b32", "top-1",
                      "Δ top-1", "agree", "parity abs", "mem MB"]
    rows = [line for line in text.splitlines()[2:] if line.split() and line.split()[0] in EAGER_B1]
    assert len(rows) == 48  # one row per preset and backend, unavailable ones included
    assert sum("unavailable: this onnxruntime build" in line for line in rows) == 4 * 3  # reasons cut short
    assert "?57.2" in next(line for line in rows if line.startswith("large") and "openvino-int8" in line)
    # the markdown the bench writes next to its result stays complete; wide=False gives the narrow one
    md = report.comparison_table(recs, fmt="markdown")
    assert md == report.comparison_table(recs, fmt="markdown", wide=True) and "p99 ms b1" in md
    narrow_md = report.comparison_table(recs, fmt="markdown", wide=False)
    assert "p99" not in narrow_md.splitlines()[0] and narrow_md.count("| unavailable [") == 7


def test_csv_and_json_hold_every_field_whatever_the_view():
    recs = realistic_records()
    rows = json.loads(report.comparison_table(recs, fmt="json"))
    assert len(rows) == 48 and report.comparison_table(recs, fmt="json", wide=False) == json.dumps(rows, indent=1)
    assert report.comparison_table(recs, fmt="csv", wide=False) == report.comparison_table(recs, fmt="csv")
    by = {(r["preset"], r["backend"]): r for r in rows}
    cuda = by[("large", "onnx-cuda-graph-fp16")]
    assert cuda["status"] == "unavailable" and cuda["reason"] == GPU_REASONS["onnx-cuda-graph-fp16"]
    r = by[("large", "openvino-int8")]
    assert r["valid_b32"] is False and r["valid_b1"] is True and r["n_b32"] == 14
    assert r["p50_ci_lo_ms_b32"] == pytest.approx(57.2, rel=0.03) and r["p99_ms_b1"] > r["p50_ms_b1"]
    assert r["speedup_ci_lo_b1"] < r["speedup_b1"] < r["speedup_ci_hi_b1"]
    assert by[("large", "onnx-int8-dynamic")]["speedup_distinguishable_b32"] is False
    for key in ("num_params", "throughput_seq_s_b1", "roofline_share_b32", "accuracy_top1_ci_lo", "accuracy_change",
                "agreement_top1", "parity_max_abs", "memory_mb", "noisy_b1", "host", "host_class", "created"):
        assert key in r
    assert set(csv.DictReader(io.StringIO(report.comparison_table(recs, fmt="csv"))).fieldnames) == set(r)


def test_cli_report_default_is_narrow_and_wide_on_request(monkeypatch, capsys):
    from signflow_zoo.cli import main

    recs = realistic_records()
    monkeypatch.setattr(report, "collect_records", lambda **kw: recs)
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120 and "vs eager b1" not in out
    assert main(["report", "--wide"]) == 0
    out = capsys.readouterr().out
    assert "vs eager b1" in out.splitlines()[0] and "p99 ms b32" in out.splitlines()[0]
    assert main(["report", "--wide", "--format", "csv"]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 48
