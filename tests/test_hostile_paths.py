"""Nothing clobbered: output paths that are not regular files, outputs that are inputs, and paths read from
metadata. Each case checks what the user sees (exit status, one line naming the path and the fix) and that
nothing else changed on disk.

Device paths (/dev/null, /dev/stdout) are only given to the check itself, never to a command that writes:
a regression there would replace the machine's /dev/null (these tests may run as root). Commands get a FIFO
or a symbolic link to /dev/stdout instead, which a regression could only damage inside tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from conftest import TINY_DATA
from signflow_zoo.cli.commands import main
from signflow_zoo.common.output_paths import OutputPathError, check_output_file


# -- helpers ------------------------------------------------------------------------------------------
def run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def one_line_error(err: str, command: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"signflow-zoo {command}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def fingerprint(path: Path) -> tuple:
    """What must not change: file type, inode, device number, size and (for a regular file) bytes."""
    st = os.lstat(path)
    content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return stat.S_IFMT(st.st_mode), st.st_ino, st.st_rdev, target, content


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def ckpt(warm_home, tmp_path) -> Path:
    """A real trained checkpoint, copied out of the warm zoo home."""
    return Path(shutil.copy(next((warm_home / "checkpoints").glob("*.pt")), tmp_path / "ck.pt"))


@pytest.fixture
def fifo(tmp_path) -> Path:
    p = tmp_path / "pipe"
    os.mkfifo(p)
    return p


# -- the check itself: device nodes and process paths, read-only --------------------------------------
@pytest.mark.parametrize("path, kind", [("/dev/null", "a character device"), ("/dev/stdout", "/dev"),
                                        ("/dev/fd/1", "/dev"), ("/proc/self/fd/1", "/proc")])
def test_device_and_process_paths_are_refused_and_left_alone(path, kind):
    if not os.path.lexists(path):
        pytest.skip(f"{path} does not exist here")
    before = os.stat(path, follow_symlinks=False)
    with pytest.raises(OutputPathError) as err:
        check_output_file(path, "--json")
    msg = str(err.value)
    assert msg.startswith(f"--json {path}") and kind in msg and "regular file" in msg
    after = os.stat(path, follow_symlinks=False)
    assert (before.st_mode, before.st_ino, before.st_rdev) == (after.st_mode, after.st_ino, after.st_rdev)


def test_a_symlink_loop_and_a_link_into_dev_are_refused(tmp_path):
    os.symlink("loop-b", tmp_path / "loop-a")
    os.symlink("loop-a", tmp_path / "loop-b")
    with pytest.raises(OutputPathError, match="loop of symbolic links"):
        check_output_file(tmp_path / "loop-a", "--output")
    os.symlink("/dev", tmp_path / "devdir")  # a folder link: the file would land in /dev
    with pytest.raises(OutputPathError, match="under /dev"):
        check_output_file(tmp_path / "devdir" / "new.json", "--json")
    assert not os.path.lexists("/dev/new.json")


# -- export ------------------------------------------------------------------------------------------
def test_export_refuses_a_fifo_and_leaves_it_a_fifo(ckpt, fifo, tmp_path, capsys):
    before, files = fingerprint(fifo), listing(tmp_path)
    rc, err = run(["export", str(ckpt), "-o", str(fifo)], capsys)
    assert rc == 2
    one_line_error(err, "export", f"--output {fifo}", "FIFO", "give the path of a regular file")
    assert fingerprint(fifo) == before and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert listing(tmp_path) == files  # no temp file, no export


def test_export_refuses_a_link_to_dev_stdout_and_keeps_the_link(ckpt, tmp_path, capsys):
    link = tmp_path / "out.onnx"
    os.symlink("/dev/stdout", link)
    before = fingerprint(link)
    rc, err = run(["export", str(ckpt), "-o", str(link)], capsys)
    assert rc == 2
    one_line_error(err, "export", str(link), "/dev/stdout", "regular file")
    assert fingerprint(link) == before


def test_export_writes_through_a_symlink_and_the_link_stays(ckpt, tmp_path, capsys):
    from signflow_zoo.model.export import read_metadata

    real = tmp_path / "models" / "v3.onnx"
    real.parent.mkdir()
    real.write_bytes(b"the previous export")
    link = tmp_path / "latest.onnx"
    os.symlink("models/v3.onnx", link)
    ck_before, files = fingerprint(ckpt), listing(tmp_path)
    capsys.readouterr()
    assert main(["export", str(ckpt), "-o", str(link), "--exporter", "legacy"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert os.path.islink(link) and os.readlink(link) == "models/v3.onnx"  # still the same link
    assert read_metadata(real)["preset"] == "tiny"  # its target is the new export
    assert Path(out["export"]["path"]).resolve() == real.resolve()
    assert listing(real.parent) == {"v3.onnx"} and listing(tmp_path) == files  # no temp file left, no other file
    assert fingerprint(ckpt) == ck_before


@pytest.mark.parametrize("how", ["same path", "dotted path", "hard link", "symlink"])
def test_export_onto_its_own_checkpoint_is_refused_before_any_work(how, ckpt, tmp_path, capsys):
    out = {"same path": ckpt, "dotted path": tmp_path / "sub" / ".." / "ck.pt",
           "hard link": tmp_path / "hard.pt", "symlink": tmp_path / "alias.onnx"}[how]
    if how == "dotted path":
        (tmp_path / "sub").mkdir()
    elif how == "hard link":
        os.link(ckpt, out)
    elif how == "symlink":
        os.symlink("ck.pt", out)
    before, files = fingerprint(ckpt), listing(tmp_path)
    rc, err = run(["export", str(ckpt), "-o", str(out)], capsys)
    assert rc == 2
    one_line_error(err, "export", f"--output {out}", "is the checkpoint being exported; choose another output file")
    assert fingerprint(ckpt) == before and listing(tmp_path) == files


def test_export_default_and_optimized_outputs_never_replace_the_checkpoint(ckpt, tmp_path, capsys):
    named_onnx = Path(shutil.copy(ckpt, tmp_path / "model.onnx"))  # default output: the same name with .onnx
    before = fingerprint(named_onnx)
    rc, err = run(["export", str(named_onnx)], capsys)
    assert rc == 2
    one_line_error(err, "export", "the default --output", "is the checkpoint being exported")
    assert fingerprint(named_onnx) == before

    named_opt = Path(shutil.copy(ckpt, tmp_path / "m.optimized.onnx"))  # --optimize writes m.optimized.onnx
    before = fingerprint(named_opt)
    rc, err = run(["export", str(named_opt), "-o", str(tmp_path / "m.onnx"), "--optimize"], capsys)
    assert rc == 2
    one_line_error(err, "export", "--optimize", "is the checkpoint being exported")
    assert fingerprint(named_opt) == before and not (tmp_path / "m.onnx").exists()


# -- train -o ----------------------------------------------------------------------------------------
def test_train_refuses_a_fifo_and_its_own_inputs_before_training(tiny_zoo_file, fifo, tmp_path, isolated_home, capsys):
    data = tmp_path / "recordings"
    data.mkdir()
    (data / "labels.csv").write_text("file,label\n")
    base = ["--zoo", str(tiny_zoo_file), "train", "--preset", "tiny", "--no-track", "--no-progress"]
    cases = [
        ([*base, "--data", TINY_DATA, "-o", str(fifo)], fifo, ["FIFO", "regular file"]),
        ([*base, "--data", TINY_DATA, "-o", str(tiny_zoo_file)], tiny_zoo_file,
         ["is the zoo file this command reads; choose another output file"]),
        ([*base, "--data", f"signflow:{data}", "-o", str(data / "labels.csv")], data / "labels.csv",
         ["is a file inside the data set signflow:", "choose another output file"]),
    ]
    for argv, victim, needles in cases:
        before = fingerprint(victim)
        rc, err = run(argv, capsys)
        assert rc == 2
        one_line_error(err, "train", f"--output {victim}", *needles)
        assert fingerprint(victim) == before
    assert not (isolated_home / "checkpoints").exists() and not (isolated_home / "data").exists()


# -- bench --json ------------------------------------------------------------------------------------
def test_bench_json_refuses_a_fifo_the_zoo_file_and_the_cache_before_any_work(warm_home, tiny_zoo_file, fifo,
                                                                                tmp_path, capsys):
    cached = next((warm_home / "checkpoints").glob("*.pt"))
    base = ["--zoo", str(tiny_zoo_file), "bench", "--preset", "tiny", "--data", TINY_DATA, "--quick", "--no-track",
            "--no-progress"]
    cases = [(fifo, ["FIFO", "regular file"]),
             (tiny_zoo_file, ["is the zoo file this command reads; choose another output file"]),
             (cached, ["is a file inside the zoo home's checkpoints folder", "choose another output file"])]
    results_before = listing(warm_home / "results") if (warm_home / "results").exists() else set()
    for victim, needles in cases:
        before = fingerprint(victim)
        rc, err = run([*base, "--json", str(victim)], capsys)
        assert rc == 2
        one_line_error(err, "bench", f"--json {victim}", *needles)
        assert fingerprint(victim) == before
    after = listing(warm_home / "results") if (warm_home / "results").exists() else set()
    assert after == results_before  # no bench started


def test_bench_json_through_a_symlink_is_written_to_its_target(tiny_zoo_file, tmp_path):
    from signflow_zoo.bench.harness import Bench, BenchConfig
    from signflow_zoo.results.files import write_json_atomic

    real = tmp_path / "runs" / "latest.json"
    real.parent.mkdir()
    real.write_text("{}")
    link = tmp_path / "result.json"
    os.symlink(real, link)
    bench = Bench(BenchConfig(presets="tiny", data=TINY_DATA, zoo_file=str(tiny_zoo_file), track=False,
                              json_path=str(link)), log=lambda msg: None)
    assert bench.json_out == real  # what _run writes to
    write_json_atomic(bench.json_out, {"ok": 1})
    assert os.readlink(link) == str(real) and json.loads(link.read_text()) == {"ok": 1}


# -- paths read from metadata ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["/etc/passwd", "../victim.pt", "..", ".", "sub/ck.pt", "", "a\\b.pt"])
def test_a_registry_file_name_must_be_a_plain_name(name):
    from signflow_zoo.backends.mlflow_models import plain_file_name
    from signflow_zoo.common.errors import ModelFileError

    with pytest.raises(ModelFileError) as err:
        plain_file_name(name, "checkpoint_file", "signflow-zoo-tiny version 3")
    assert "tag checkpoint_file=" in str(err.value) and "signflow-zoo-tiny version 3" in str(err.value)
    assert plain_file_name("tiny-0123.pt", "checkpoint_file", "v") == "tiny-0123.pt"


def test_a_registry_tag_pointing_outside_moves_nothing(warm_home, tiny_zoo_file, tmp_path, monkeypatch, capsys):
    """A registered version whose checkpoint_file tag is an absolute path or ../x (and whose sha256 tag even
    matches that file) is an error naming the tag and the version; the file stays where it is."""
    from mlflow.tracking import MlflowClient

    from signflow_zoo.backends import mlflow_models
    from signflow_zoo.model.export import file_sha256

    cached = next((warm_home / "checkpoints").glob("*.pt"))
    label = mlflow_models.register_checkpoint(cached, "legacy", warm_home, lambda msg: None)
    assert label and label.endswith("version 1")
    client = MlflowClient()
    name = mlflow_models.model_name("tiny")
    victim = tmp_path / "victim.pt"  # someone's file, outside the registered run's artifacts
    victim.write_bytes(b"someone else's weights")
    # a relative ../ tag: the download lands in <home>/.registry-*/weights, so ../../.. climbs to tmp_path
    for tag in (str(victim), "../../../victim.pt"):
        client.set_model_version_tag(name, "1", "checkpoint_file", tag)
        client.set_model_version_tag(name, "1", "checkpoint_sha256", file_sha256(victim))
        before = fingerprint(victim)
        home = tmp_path / f"other-host-{len(tag)}"  # a host without the checkpoint: pulls from the registry
        monkeypatch.setenv("SIGNFLOW_ZOO_HOME", str(home))
        rc, err = run(["--zoo", str(tiny_zoo_file), "train", "--preset", "tiny", "--data", TINY_DATA,
                       "--from-registry", "--no-progress"], capsys)
        assert rc == 2, err
        one_line_error(err, "train", f"{name} version 1", f"tag checkpoint_file={tag!r}", "not a plain file name")
        assert fingerprint(victim) == before
        assert not (home / "checkpoints" / cached.name).exists()
        assert not list(home.glob(".registry-*"))  # nothing downloaded (the tag is checked first)


def test_an_artifact_record_naming_a_file_outside_its_folder_is_an_error(tmp_path):
    from signflow_zoo.backends import kinds
    from signflow_zoo.common.errors import ModelFileError

    class Kind(kinds.ArtifactKind):
        name, source, version, main_file = "test-kind", "onnx", "1", "model.bin"

    folder = tmp_path / "kind-folder"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"x")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    for rel in (str(outside), "../outside.bin"):
        (folder / kinds.RECORD).write_text(json.dumps({"files": {rel: "0" * 64}, "sha256": "0" * 64}))
        with pytest.raises(ModelFileError, match="not a file inside its folder"):
            kinds._verified_record(folder, Kind())
    assert outside.read_bytes() == b"secret"


# -- roofline cache ----------------------------------------------------------------------------------
def test_roofline_cache_temp_name_is_unique_beyond_the_pid(tmp_path, monkeypatch):
    from signflow_zoo.bench import roofline

    monkeypatch.setattr(roofline, "measure", lambda threads, **kw: {"format": roofline.FORMAT_VERSION,
                                                                     "ceilings": {"fp32": 1.0}})
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst, *a, **kw):
        renames.append((os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", spy)
    for _ in range(2):
        roofline.load_or_measure(1, refresh=True, home=tmp_path)
    path = roofline.cache_path(1, tmp_path)
    temps = [Path(src) for src, dst in renames if Path(dst) == path]
    assert len(temps) == 2 and temps[0] != temps[1]  # two calls in one process: two names
    for tmp in temps:
        assert tmp.parent == path.parent and str(os.getpid()) in tmp.name
        assert tmp.name.replace(str(os.getpid()), "") != f"{path.name}..tmp"  # more than the pid tells them apart
    assert listing(path.parent) == {path.name} and json.loads(path.read_text())["ceilings"] == {"fp32": 1.0}
