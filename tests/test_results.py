"""Result files: the typed schema-2 records, the one writer, and files of the previous schema still
readable by `sync` and `report`."""

import json
import shutil
from pathlib import Path

import pytest

from signflow_zoo import report
from signflow_zoo.cli.commands import main
from signflow_zoo.results.records import SCHEMA, BenchDocument, BenchRecord
from signflow_zoo.results.files import flat_records, read_result, write_result

SCHEMA1_FILE = Path(__file__).parent / "data" / "bench-schema1.json"


def test_schema1_file_is_upgraded_without_losing_numbers():
    raw = json.loads(SCHEMA1_FILE.read_text())
    doc = read_result(SCHEMA1_FILE)
    assert raw["schema"] == "signflow-zoo/bench/1" and doc["schema"] == SCHEMA
    for old, new in zip(raw["records"], doc["records"]):
        assert (new["preset"], new["backend"], new["status"]) == (old["preset"], old["backend"], old["status"])
        for b, lat in old["latency"].items():
            assert new["latency"][b]["p50_ms"] == lat["p50_ms"] and new["latency"][b]["noisy"] == lat["noisy"]
            assert new["latency"][b]["valid"] is (not lat["short"])
        if old.get("memory_mb") is not None:
            assert new["memory"]["added_mb"] == old["memory_mb"] and "schema 1" in new["memory"]["what"]
    flat = {r["backend"]: r for r in flat_records(doc)}
    assert flat["onnx-cpu"]["latency_p50_ms_b1"] == raw["records"][1]["latency"]["1"]["p50_ms"]


def test_typed_records_round_trip_through_the_writer(tmp_path):
    doc = BenchDocument.from_dict(json.loads(SCHEMA1_FILE.read_text()))
    doc.result_file = str(tmp_path / "r.json")
    doc.drift.readings = [{"at": "start", "ms": 2.0, "time": "t0"}, {"at": "end", "ms": 2.2, "time": "t1"}]
    doc.records[0].samples = {1: [[1.25, 1.5], [1.125]], 32: [[9.0]]}
    path = write_result(doc)
    again = BenchDocument.from_dict(json.loads(path.read_text()))
    assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(doc.to_dict(), sort_keys=True)  # NaN-safe
    assert again.drift.ratio == pytest.approx(1.1) and again.drift.spread == pytest.approx(1.1)
    assert again.records[0].samples == {1: [[1.25, 1.5], [1.125]], 32: [[9.0]]}  # per-call samples kept
    assert not list(tmp_path.glob("*.tmp"))  # the writer leaves no temp file behind


@pytest.mark.parametrize("bad", ['{"schema": "other/1", "records": []}', "[1, 2]", "{not json"])
def test_unreadable_result_files_name_the_problem(tmp_path, bad):
    p = tmp_path / "bench-x.json"
    p.write_text(bad)
    with pytest.raises(ValueError):
        read_result(p)


def test_record_statuses_and_failures_are_typed():
    rec = BenchRecord(result_id="r", preset="p", backend="b")
    rec.fail("timeout", "did not answer")
    d = rec.to_dict()
    assert d["status"] == "timeout" and BenchRecord.from_dict(d).reason == "did not answer"


@pytest.mark.slow
def test_sync_and_report_read_schema1_files(isolated_home, capsys):
    results = isolated_home / "results"
    results.mkdir(parents=True)
    target = results / SCHEMA1_FILE.name
    shutil.copy(SCHEMA1_FILE, target)
    assert main(["sync"]) == 0
    assert "uploaded 1" in capsys.readouterr().out
    assert json.loads(target.read_text())["tracking"]["uploaded"] is True
    rows = {r["backend"]: r for r in report.collect_records()}
    raw = json.loads(SCHEMA1_FILE.read_text())
    assert set(rows) == {r["backend"] for r in raw["records"]}
    assert rows["onnx-cpu"]["latency_p50_ms_b1"] == pytest.approx(raw["records"][1]["latency"]["1"]["p50_ms"])
    assert main(["report"]) == 0
    assert "onnx-cpu" in capsys.readouterr().out
    assert main(["sync"]) == 0 and "uploaded 0" in capsys.readouterr().out
