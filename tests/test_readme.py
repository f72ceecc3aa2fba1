"""The README's Python example (the seed's examples with signflow_zoo module paths) runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.slow


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_seed_examples_run(tmp_path, capsys):
    block = next(b for b in _blocks() if "list_model_configs" in b)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "lightweight 128 4 2 512" in out
    assert (tmp_path / "lightweight.pt").is_file() and (tmp_path / "lightweight.onnx").is_file()
    assert (tmp_path / "lightweight.optimized.onnx").is_file()


def test_serving_example_runs(tmp_path):
    from signflow_zoo.testing import tiny_artifacts

    arts = tiny_artifacts(tmp_path)
    (tmp_path / "lightweight.onnx").write_bytes(arts.onnx.read_bytes())
    block = next(b for b in _blocks() if "SignFlowInferencePipeline" in b)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    assert ns["pipe"].labels == arts.labels

