"""The README's Python blocks run as written: in an empty folder, in order, nothing replaced between them."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.slow


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_python_api_blocks_train_export_and_serve(tmp_path, capsys):
    """The seed's example trains and exports ``lightweight.onnx``; the serving block streams frames to it.
    (conftest runs every test in its own empty tmp_path.)"""
    assert Path.cwd() == tmp_path and not list(tmp_path.glob("lightweight*"))
    seed = next(b for b in _blocks() if "list_model_configs" in b)
    serve = next(b for b in _blocks() if "process_frame" in b)
    exec(compile(seed, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "lightweight 128 4 2 512" in out
    for name in ("lightweight.pt", "lightweight.onnx", "lightweight.optimized.onnx"):
        assert (tmp_path / name).is_file()
    written = (tmp_path / "lightweight.onnx").stat().st_mtime_ns

    ns: dict = {}
    exec(compile(serve, "README.md", "exec"), ns)
    out = capsys.readouterr().out.splitlines()
    assert (tmp_path / "lightweight.onnx").stat().st_mtime_ns == written  # served what the first block wrote
    pipe = ns["pipe"]
    assert pipe.labels == ns["names"] and pipe.model_path == Path("lightweight.onnx")
    signs = [line for line in out if " best: " in line]
    assert len(signs) >= len(ns["clips"]) // 2, out  # the state machine found the signs in the replay
    for line in signs:
        wire, best = line.split(" best: ")
        assert wire.split()[0] in pipe.labels + ["NONE"] and best.split()[0] in pipe.labels
    assert out[-1].startswith("sentence:")
