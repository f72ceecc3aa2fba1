"""`report --by-host`: one column per host (or host class) from synthetic flat records, no MLflow store."""

from __future__ import annotations

import csv
import io
import json

import pytest

from signflow_zoo import report
from signflow_zoo.cli.commands import main
from signflow_zoo.report import ReportError, by_host_table
from signflow_zoo.report.hosts import LONG_COLUMNS

INTEL, AMD = "intel-f6m167-amx-2cpu", "amd-f25m17-avx512-8cpu"
OPENVINO_REASON = "openvino is not installed (pip install signflow-zoo-openvino)"
LOST_REASON = "node lost mid-run (ActorDiedError)"
LOST = [{"host": "lab-3", "preset": "lightweight", "backend": "onnx-cpu", "reason": LOST_REASON}]


def ok(preset, backend, host, cls, p50, start, invocation="inv-1", speedup=None, ci=None):
    """An ok flat record at batch 1; ``speedup``/``ci`` as the bench stores them against its own reference."""
    rec = {"preset": preset, "backend": backend, "host": host, "host_class": cls, "status": "ok", "reason": "",
           "invocation_id": f"{invocation}-{host}", "start_time": start, "latency_p50_ms_b1": p50}
    if speedup is not None:
        rec.update(speedup_b1=speedup, speedup_distinguishable_b1=1.0)
    if ci is not None:
        rec.update(speedup_ci_lo_b1=ci[0], speedup_ci_hi_b1=ci[1])
    return rec


def two_hosts():
    """lab-1 (Intel) and lab-2 (AMD): torch-eager and onnx-cpu on both, openvino-fp32 unavailable on lab-2."""
    return [
        ok("lightweight", "torch-eager", "lab-1", INTEL, 3.88, 1000),
        ok("lightweight", "onnx-cpu", "lab-1", INTEL, 1.54, 1000, speedup=2.52, ci=(2.44, 2.61)),
        ok("lightweight", "openvino-fp32", "lab-1", INTEL, 1.65, 1000, speedup=2.35, ci=(2.27, 2.43)),
        ok("lightweight", "torch-eager", "lab-2", AMD, 1.21, 2000),
        ok("lightweight", "onnx-cpu", "lab-2", AMD, 0.52, 2000, speedup=2.33, ci=(2.25, 2.40)),
        {"preset": "lightweight", "backend": "openvino-fp32", "host": "lab-2", "host_class": AMD,
         "status": "unavailable", "reason": OPENVINO_REASON, "invocation_id": "inv-1-lab-2", "start_time": 2000},
    ]


def rows_of(text):
    """The table's data rows (after the dashes) as {backend: line}."""
    lines = text.splitlines()
    body = lines[2:lines.index("")]
    return {line.split()[1]: line for line in body}


def test_one_column_per_host_with_intervals_statuses_and_notes():
    text = by_host_table(two_hosts(), lost=LOST)
    header = text.splitlines()[0].split()
    assert header == ["preset", "backend", "lab-1", "lab-2", "lab-3"]
    rows = rows_of(text)
    assert list(rows) == ["torch-eager", "onnx-cpu", "openvino-fp32"]  # the reference first, then by name
    assert "1x · 3.88 ms" in rows["torch-eager"] and "1x · 1.21 ms" in rows["torch-eager"]
    assert "2.52x [2.44, 2.61] · 1.54 ms" in rows["onnx-cpu"]
    assert "2.33x [2.25, 2.40] · 0.520 ms" in rows["onnx-cpu"]
    assert rows["onnx-cpu"].rstrip().endswith("lost [1]")
    assert "unavailable [2]" in rows["openvino-fp32"]
    assert f"[1] {LOST_REASON}" in text and f"[2] {OPENVINO_REASON}" in text
    assert f"lab-1: host class {INTEL}" in text and f"lab-2: host class {AMD}" in text
    flat = " ".join(text.split())
    assert "raw: not comparable across host classes" in flat and "95% bootstrap interval" in flat


def test_a_reason_is_one_note_however_many_cells_have_it():
    recs = two_hosts() + [{**two_hosts()[-1], "preset": "baseline"}]
    text = by_host_table(recs)
    assert text.count(OPENVINO_REASON) == 1 and text.count("unavailable [1]") == 2


def test_a_speedup_across_invocations_is_the_ratio_without_an_interval():
    recs = [ok("lightweight", "torch-eager", "lab-1", INTEL, 4.0, 1000, invocation="old"),
            ok("lightweight", "onnx-cpu", "lab-1", INTEL, 2.0, 5000, invocation="new", speedup=9.9, ci=(9.0, 11.0))]
    row = rows_of(by_host_table(recs))["onnx-cpu"]
    assert "2.00x · 2.00 ms" in row and "[" not in row  # the stored 9.9x was against another run's reference


def test_a_backend_without_a_reference_on_its_host_shows_ms_and_says_why():
    text = by_host_table([ok("lightweight", "onnx-cpu", "lab-1", INTEL, 1.5, 1000)])
    assert rows_of(text)["onnx-cpu"].rstrip().endswith("1.50 ms") and "no speedup" in text


def test_by_class_takes_the_newest_result_per_cell_and_says_from_which_host():
    recs = two_hosts() + [ok("lightweight", "onnx-cpu", "lab-4", INTEL, 1.49, 5000, invocation="inv-2"),
                          ok("lightweight", "torch-eager", "lab-4", INTEL, 3.70, 5000, invocation="inv-2")]
    recs[-2].update(speedup_b1=2.48, speedup_ci_lo_b1=2.40, speedup_ci_hi_b1=2.55)
    text = by_host_table(recs, by="class")
    assert text.splitlines()[0].split() == ["preset", "backend", AMD, INTEL]
    rows = rows_of(text)
    assert "2.48x [2.40, 2.55] · 1.49 ms" in rows["onnx-cpu"] and "1.54 ms" not in text  # lab-4 is newer
    assert "1x · 3.70 ms" in rows["torch-eager"]
    assert "2.35x [2.27, 2.43] · 1.65 ms" in rows["openvino-fp32"]  # only lab-1 ran it
    flat = " ".join(text.split())
    assert f"{AMD}: host lab-2" in flat
    assert (f"{INTEL}: the newest result per cell of 2 hosts; from lab-1: lightweight/openvino-fp32; "
            "lab-4: lightweight/torch-eager, lightweight/onnx-cpu") in flat  # in row order


def test_csv_is_the_long_form_with_raw_numbers():
    rows = list(csv.DictReader(io.StringIO(by_host_table(two_hosts(), fmt="csv", lost=LOST))))
    assert len(rows) == 7  # 6 records + 1 lost cell; the empty cells are no rows
    by = {(r["backend"], r["host"]): r for r in rows}
    onnx = by[("onnx-cpu", "lab-1")]
    assert onnx["host_class"] == INTEL and onnx["status"] == "ok" and onnx["batch_size"] == "1"
    assert (float(onnx["speedup"]), float(onnx["speedup_ci_lo"]), float(onnx["speedup_ci_hi"])) == (2.52, 2.44, 2.61)
    assert float(onnx["p50_ms"]) == 1.54 and onnx["lost"] == "False"
    assert float(by[("torch-eager", "lab-2")]["speedup"]) == 1.0 and by[("torch-eager", "lab-2")]["speedup_ci_lo"] == ""
    assert by[("onnx-cpu", "lab-3")]["status"] == "lost" and by[("onnx-cpu", "lab-3")]["lost"] == "True"
    assert by[("openvino-fp32", "lab-2")]["reason"] == OPENVINO_REASON


def test_json_is_the_long_form_with_raw_numbers():
    rows = json.loads(by_host_table(two_hosts(), fmt="json", lost=LOST))
    assert list(rows[0]) == list(LONG_COLUMNS)
    by = {(r["backend"], r["host"]): r for r in rows}
    assert by[("onnx-cpu", "lab-2")] == {
        "preset": "lightweight", "backend": "onnx-cpu", "host": "lab-2", "host_class": AMD, "status": "ok",
        "reason": "", "batch_size": 1, "speedup": 2.33, "speedup_ci_lo": 2.25, "speedup_ci_hi": 2.40, "p50_ms": 0.52,
        "lost": False}
    lost = by[("onnx-cpu", "lab-3")]
    assert lost["lost"] is True and lost["reason"] == LOST_REASON and lost["p50_ms"] is None


def test_json_by_class_names_the_host_each_cell_came_from():
    recs = two_hosts() + [ok("lightweight", "onnx-cpu", "lab-4", INTEL, 1.49, 5000, invocation="inv-2")]
    rows = json.loads(by_host_table(recs, fmt="json", by="class"))
    cell = next(r for r in rows if r["backend"] == "onnx-cpu" and r["host_class"] == INTEL)
    assert cell["host"] == "lab-4" and cell["p50_ms"] == 1.49 and cell["speedup"] is None  # no eager on lab-4


def test_markdown_keeps_the_notes_as_paragraphs():
    text = by_host_table(two_hosts(), fmt="markdown")
    assert text.startswith("| preset") and f"\n\nlab-2: host class {AMD}\n\n" in text
    assert "raw: not comparable across host classes" in text


def test_a_host_without_the_batch_size_says_so():
    recs = two_hosts()
    for r in recs:
        if r["host"] == "lab-2" and "latency_p50_ms_b1" in r:
            r["latency_p50_ms_b32"] = r.pop("latency_p50_ms_b1")
    rows = rows_of(by_host_table(recs))
    assert rows["torch-eager"].rstrip().endswith("not at b1") and "1x · 3.88 ms" in rows["torch-eager"]


def test_only_lost_cells_still_make_a_table():
    text = by_host_table([], lost=LOST)
    assert "lost [1]" in text and "lab-3: no result (lost cells only)" in text


def test_errors_name_what_is_wrong():
    with pytest.raises(ReportError, match="no bench records"):
        by_host_table([])
    with pytest.raises(ReportError, match=r"batch size 32 was not measured.*measured: 1"):
        by_host_table(two_hosts(), batch_size=32)
    with pytest.raises(ReportError, match="by must be one of host, class"):
        by_host_table(two_hosts(), by="cpu")
    with pytest.raises(ReportError, match="unknown report format"):
        by_host_table(two_hosts(), fmt="html")


def test_cli_by_host_prints_the_table(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(report, "collect_records", lambda **kw: seen.update(kw) or two_hosts())
    assert main(["report", "--by-host", "--host", "lab-1,lab-2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["preset", "backend", "lab-1", "lab-2"]
    assert seen["host"] == "lab-1,lab-2" and seen["latest"] is True
    assert main(["report", "--by-host", "class", "--format", "json"]) == 0
    assert {r["host_class"] for r in json.loads(capsys.readouterr().out)} == {INTEL, AMD}


@pytest.mark.parametrize("flags,named", [(["--compare", "a.json", "b.json"], "--compare"),
                                         (["--deployment"], "--deployment"), (["--all-runs"], "--all-runs")])
def test_cli_by_host_refuses_the_flags_of_other_tables(flags, named, monkeypatch, capsys):
    monkeypatch.setattr(report, "collect_records", lambda **kw: pytest.fail("read the store before refusing"))
    assert main(["report", "--by-host", *flags]) == 2
    err = capsys.readouterr().err
    assert f"--by-host does not go with {named}" in err and len(err.strip().splitlines()) == 1
