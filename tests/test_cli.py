"""The command line's manners: ranges on every number, one-line errors, quiet closed pipes, bars only on a
terminal, and each command as the library call its docstring names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_DATA
from signflow_zoo.common import limits
from signflow_zoo.cli.commands import EXIT_BROKEN_PIPE, build_parser, main

ENTRY = [sys.executable, "-m", "signflow_zoo.cli"]

# Each ranged option, with a command that takes it and what that command needs besides.
RANGED = [
    ("presets", "--num-classes", []), ("train", "--epochs", ["--preset", "tiny"]), ("train", "--lr", ["--preset", "tiny"]),
    ("train", "--batch-size", ["--preset", "tiny"]), ("train", "--seed", ["--preset", "tiny"]),
    ("bench", "--batch-sizes", []), ("bench", "--threads", []), ("bench", "--warmup", []), ("bench", "--min-iters", []),
    ("bench", "--min-time", []), ("bench", "--timeout", []), ("bench", "--seed", []), ("bench", "--epochs", []),
    ("ui", "--port", []), ("report", "--batch-size", []),
    ("predict", "--threshold", ["clip.npy", "--model", "m.onnx"]), ("predict", "--temperature", ["clip.npy", "--model", "m.onnx"]),
    ("predict", "--threads", ["clip.npy", "--model", "m.onnx"]), ("stream", "--fps", ["clip.npy", "--model", "m.onnx"]),
    ("stream", "--rest-frames", ["clip.npy", "--model", "m.onnx"]),
]


def _outside(r: limits.Range) -> list[str]:
    below = r.lo if r.lo_open else r.lo - 1
    above = r.hi + 1
    out = [str(int(below)) if r.kind is int else f"{below:g}", str(int(above)) if r.kind is int else repr(above * 2),
           "nan", "inf", "-inf", "", "1e999", "x"]
    if r.kind is int:
        out += ["1.5", "9" * 5000]
    return out


@pytest.mark.parametrize("command,flag,extra", RANGED)
def test_every_ranged_option_refuses_what_is_outside_in_one_line(command, flag, extra, capsys, isolated_home):
    r = limits.BATCH_SIZE if command == "report" else limits.CLI_OPTIONS[flag]
    for bad in _outside(r):
        assert main([command, *extra, f"{flag}={bad}"]) == 2, (flag, bad)
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert flag in err and r.text in err and "Traceback" not in err
    assert not any(isolated_home.glob("**/*"))  # nothing was started, nothing written


@pytest.mark.parametrize("command,flag,extra", RANGED)
def test_every_ranged_option_documents_its_range_in_help(command, flag, extra, capsys):
    r = limits.BATCH_SIZE if command == "report" else limits.CLI_OPTIONS[flag]
    assert main([command, "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert flag in help_text and r.text in help_text


def test_docs_user_errors_paragraph_lists_every_range():
    text = (Path(__file__).parents[1] / "docs" / "commands.md").read_text()
    para = " ".join(text[text.index("User errors ("):].split("\n\n")[0].split())
    for flag, r in limits.CLI_OPTIONS.items():
        assert f"`{flag}`" in para, flag
        if flag != "--threads":  # depends on the machine: written as a rule
            assert r.text in para, (flag, r.text)
    assert "4 per core" in para and "256" in para
    assert str(limits.SYNTHETIC_CLIPS.hi) in para and str(limits.REPORT_SINCE_DAYS) in para


def test_numbers_inside_their_ranges_parse():
    parser = build_parser()
    args = parser.parse_args(["bench", "--batch-sizes", "1,4096,1", "--threads", str(limits.max_threads()),
                              "--min-time", "0", "--timeout", "1e-3", "--seed", str(2**32 - 1), "--warmup", "0"])
    assert args.batch_sizes == (1, 4096) and args.seed == 2**32 - 1 and args.min_time == 0.0
    args = parser.parse_args(["train", "--preset", "x", "--lr", "1", "--epochs", "10000", "--batch-size", "4096"])
    assert args.lr == 1.0 and args.epochs == 10000


def test_usage_errors_are_one_line_naming_the_help(capsys):
    for argv in (["bench", "--presets", "x"], ["nonsense"], ["train"], ["bench", "--schedule", "random"], []):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--help" in err and "Traceback" not in err, err


def test_a_library_message_on_several_lines_is_printed_on_one(capsys):
    assert main(["bench", "--data", "synthetic:colours=3", "--no-track"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Valid forms: synthetic;" in err and "signflow:PATH" in err


# -- closed pipes ------------------------------------------------------------------------------------


def test_a_closed_stdout_ends_quietly_in_process(monkeypatch, capsys):
    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Gone())
    assert main(["presets", "--json"]) == EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [["presets"], ["--help"]])
def test_a_reader_gone_before_the_output_exits_141_without_a_word(argv):
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -1` that has already exited
    try:
        proc = subprocess.run([*ENTRY, *argv], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    # argparse swallows the error of its own help output: that ends quietly too, with 0
    assert proc.returncode == (EXIT_BROKEN_PIPE if argv != ["--help"] else 0) and proc.stderr == ""


def test_presets_piped_into_head():
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", f"{sys.executable} -m signflow_zoo.cli presets | head -1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["name", "d_model", "heads", "layers", "dim_ff", "params", "gflop_per_seq", "use_case"]
    assert proc.stderr == "" and proc.returncode in (0, EXIT_BROKEN_PIPE)


# -- progress bars ---------------------------------------------------------------------------------------


def _train_argv(zoo_file, out, *extra):
    return [*ENTRY, "--zoo", str(zoo_file), "train", "--preset", "tiny", "--data", TINY_DATA, "--epochs", "1",
            "--no-track", "--output", str(out), *extra]


@pytest.mark.slow
def test_training_bars_draw_on_a_terminal_only(tiny_zoo_file, tmp_path):
    import pty

    log = tmp_path / "train.log"
    with log.open("w") as fh:
        proc = subprocess.run(_train_argv(tiny_zoo_file, tmp_path / "a.pt"), stderr=fh, stdout=subprocess.PIPE,
                              text=True, timeout=300)
    assert proc.returncode == 0
    text = log.read_text()
    assert "epoch 1/1: train_loss" in text and "\r" not in text  # the epoch line, no redraws
    assert json.loads(proc.stdout)["checkpoint"] == str(tmp_path / "a.pt")

    import fcntl
    import struct
    import termios
    import tty

    main_fd, term_fd = pty.openpty()  # a terminal: the same command draws its bar
    tty.setraw(term_fd)  # no "\n" -> "\r\n" translation: every "\r" read is the program's own
    fcntl.ioctl(term_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    drawn = b""
    try:
        proc = subprocess.Popen(_train_argv(tiny_zoo_file, tmp_path / "b.pt", "--batch-size", "4"), stderr=term_fd,
                                stdout=subprocess.DEVNULL)
        os.close(term_fd)
        while True:  # read while it runs: a full terminal buffer would block the writer
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # EIO: the other end is closed and drained
                break
            if not chunk:
                break
            drawn += chunk
        proc.wait(timeout=300)
    finally:
        os.close(main_fd)
    assert proc.returncode == 0 and b"\r" in drawn and b"batch/s" in drawn, drawn


@pytest.mark.slow
def test_a_bench_log_written_to_a_file_has_no_redraws(tiny_zoo_file, tmp_path):
    log = tmp_path / "bench.log"
    with log.open("w") as fh:
        proc = subprocess.run([*ENTRY, "--zoo", str(tiny_zoo_file), "bench", "--preset", "tiny", "--data", TINY_DATA,
                               "--backends", "onnx-cpu", "--quick", "--min-time", "0.05", "--batch-sizes", "1",
                               "--exporter", "legacy", "--no-track", "--no-stream", "--epochs", "1"],
                              stderr=fh, stdout=subprocess.PIPE, text=True, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "tiny: training" in text and "epoch 1/1: train_loss" in text and "\r" not in text


# -- each command is a library call ----------------------------------------------------------------------


@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_train_writes_where_bench_looks(tiny_zoo_file, capsys, isolated_home):
    from signflow_zoo.bench.harness import Bench, BenchConfig

    assert main(["--zoo", str(tiny_zoo_file), "train", "--preset", "tiny", "--data", TINY_DATA, "--epochs", "1",
                 "--no-track", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epochs_run"] == 1 and 0 <= out["test_accuracy"] <= 1 and out["mlflow_run_id"] is None
    bench = Bench(BenchConfig(presets="tiny", data=TINY_DATA, zoo_file=str(tiny_zoo_file), epochs=1, track=False),
                  log=lambda msg: None)
    assert bench.checkpoint_file(bench.entries[0]) == Path(out["checkpoint"])
    from signflow_zoo.model.checkpoint import read_checkpoint

    meta = read_checkpoint(out["checkpoint"])[1]
    assert meta["preset"] == "tiny" and meta["test_accuracy"] == pytest.approx(out["test_accuracy"], abs=1e-4)


def test_train_refuses_an_output_it_cannot_write_before_training(tiny_zoo_file, tmp_path, capsys, isolated_home):
    for out in (tmp_path, Path("/etc/hostname/model.pt")):
        assert main(["--zoo", str(tiny_zoo_file), "train", "--preset", "tiny", "--data", TINY_DATA, "--no-track",
                     "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--output" in err and len(err.strip().splitlines()) == 1
    assert not (isolated_home / "checkpoints").exists()


@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_export_command_is_export_checkpoint(tiny_artifacts, tmp_path, capsys):
    from signflow_zoo.model.export import read_metadata

    ckpt = shutil.copy(tiny_artifacts.checkpoint, tmp_path / "m.pt")
    assert main(["export", str(ckpt), "--exporter", "legacy", "--optimize"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m.optimized.onnx").is_file()
    assert out["export"]["max_abs_error"] < 1e-3 and "note" in out["optimize"]
    assert read_metadata(tmp_path / "m.onnx")["labels"] == tiny_artifacts.labels

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    for argv in (["export", str(garbage)], ["export", str(ckpt), "--output", str(tmp_path)]):
        assert main(argv) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "garbage.onnx").exists()


def test_every_command_names_its_library_call():
    from signflow_zoo.cli import commands as cli
    from signflow_zoo.cli import report as cli_report

    import re

    import signflow_zoo

    for fn in (cli.cmd_presets, cli.cmd_backends, cli.cmd_train, cli.cmd_export, cli.cmd_bench, cli.cmd_sync,
               cli.cmd_doctor, cli.cmd_ui, cli_report.handler):
        doc = fn.__doc__ or ""
        assert "Python:" in doc, fn.__name__
        for path in re.findall(r"``(signflow_zoo(?:\.\w+)+)", doc):  # every call it names exists
            module, _, name = path.rpartition(".")
            target = signflow_zoo if module == "signflow_zoo" else __import__(module, fromlist=[name])
            assert hasattr(target, name), f"{fn.__name__} names {path}, which does not exist"


# -- the library refuses the same numbers -----------------------------------------------------------------


@pytest.mark.parametrize("field,value", [("batch_sizes", (0,)), ("batch_sizes", (5000,)), ("batch_sizes", tuple(range(1, 18))),
                                         ("threads", 0), ("threads", 10**6), ("seed", -1), ("seed", 2**32),
                                         ("epochs", 0), ("data", "synthetic:signers=5000")])
def test_bench_config_validate_uses_the_same_ranges(field, value):
    from signflow_zoo.common.errors import SignFlowError
    from signflow_zoo.bench.harness import BenchConfig

    with pytest.raises(SignFlowError):
        BenchConfig(**{field: value}).validate()


@pytest.mark.parametrize("field,value", [("warmup", 10**6), ("min_iters", 10**7), ("min_time", 3601.0),
                                         ("timeout", 1e9), ("min_time", float("nan"))])
def test_bench_config_validate_bounds_the_timing_numbers(field, value):
    from dataclasses import replace

    from signflow_zoo.common.errors import SignFlowError
    from signflow_zoo.bench.harness import BenchConfig
    from signflow_zoo.bench.timing import TimingConfig

    with pytest.raises(SignFlowError, match=field.replace("_", "-")):
        BenchConfig(timing=replace(TimingConfig(), **{field: value})).validate()


def test_bench_json_path_is_checked_before_any_work(tmp_path):
    from signflow_zoo.bench.harness import BenchConfig
    from signflow_zoo.common.output_paths import OutputPathError

    for bad in (tmp_path, "/etc/hostname/result.json", ""):
        with pytest.raises(OutputPathError, match="--json"):
            BenchConfig(json_path=str(bad)).validate()
    BenchConfig(json_path=str(tmp_path / "new" / "deeper" / "r.json")).validate()
    assert not (tmp_path / "new").exists()  # the check creates nothing


def test_batch_memory_estimate_refuses_what_cannot_fit():
    from signflow_zoo.common.errors import SignFlowError
    from signflow_zoo.model.presets import check_batch_memory, inference_bytes
    from signflow_zoo.model.zoo import Zoo

    entry = Zoo.load().get("xlarge")
    assert inference_bytes(entry, 4096, 64) > 8 * inference_bytes(entry, 256, 64) > 0
    check_batch_memory([entry], (1, 32), 64, backends=4, available=8 * 2**30)
    with pytest.raises(SignFlowError, match=r"--batch-sizes 4096.*GiB"):
        check_batch_memory([entry], (1, 4096), 64, backends=4, available=8 * 2**30)


def test_report_since_is_bounded():
    from signflow_zoo.report import ReportError, parse_since

    for bad in ("1000000d", "99999999999999999999w", "36501d", "last tuesday"):
        with pytest.raises(ReportError):
            parse_since(bad)
    assert parse_since("36500d") < 0  # 100 years back: before 1970
