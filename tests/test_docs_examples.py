"""The documentation's examples run as written, and the docs site builds.

Every ```python block of ``README.md`` and of each ``docs/`` page runs in an empty folder (conftest runs each
test in its own tmp_path), the blocks of one page in order and in one namespace, nothing replaced between
them. A block that must not run (a file meant for a user's own package) is marked by a line
``<!-- not-run: REASON -->`` in the text between the previous code block and it, and is skipped with that
reason; keep such blocks few.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import signflow_zoo

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"^<!--\s*not-run:(.*?)-->[ \t]*$", re.M)
MAX_NOT_RUN = 3  # blocks that do not run, over all pages


@dataclass
class Block:
    page: Path
    line: int  # of the block's first code line, 1-based
    code: str
    skip: str | None  # the not-run reason


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def python_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    blocks, prev_end = [], 0
    for m in FENCE.finditer(text):
        if m.group(1) == "python":
            markers = NOT_RUN.findall(text, prev_end, m.start())
            skip = markers[-1].strip() if markers else None
            blocks.append(Block(page, text.count("\n", 0, m.start()) + 2, m.group(2), skip))
        prev_end = m.end()
    return blocks


def run_page(page: Path, folder: Path, capsys) -> tuple[dict, list[str | None], list[dict[str, int]]]:
    """Runs the page's blocks; returns the namespace, each block's stdout (None: not run) and the folder's files
    (name -> mtime_ns) after each block."""
    ns: dict = {"__name__": "docs_example"}
    outputs: list[str | None] = []
    files: list[dict[str, int]] = []
    for block in python_blocks(page):
        if block.skip is None:
            code = "\n" * (block.line - 1) + block.code  # tracebacks name the page's own line numbers
            exec(compile(code, rel(page), "exec"), ns)
            outputs.append(capsys.readouterr().out)
        else:
            outputs.append(None)
        files.append({p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()})
    return ns, outputs, files


# -- what each page's examples must have done, beyond running -----------------------------------------------
def check_readme(folder: Path, ns: dict, outputs: list, files: list) -> None:
    assert outputs[0].splitlines()[0] == str(signflow_zoo.list_presets())
    available = [b["name"] for b in ns["backends"] if b["available"]]
    assert "torch-eager" in available and "onnx-cpu" in available, available


def check_api(folder: Path, ns: dict, outputs: list, files: list) -> None:
    """The seed's example trains and exports ``lightweight.onnx``; the serving block streams frames to it."""
    train, serve = outputs
    assert "lightweight 128 4 2 512" in train
    for name in ("lightweight.pt", "lightweight.onnx", "lightweight.optimized.onnx"):
        assert name in files[0], name
    assert files[1]["lightweight.onnx"] == files[0]["lightweight.onnx"]  # served what the first block wrote
    pipe = ns["pipe"]
    assert pipe.labels == ns["names"] and pipe.model_path == Path("lightweight.onnx")
    cal = ns["trainer"].calibration  # the .onnx serves the calibration the .pt has
    assert pipe.temperature == cal["temperature"] and pipe.class_thresholds == cal["class_thresholds"]
    out = serve.splitlines()
    signs = [line for line in out if " best: " in line]
    assert len(signs) >= len(ns["clips"]) // 2, out  # the state machine found the signs in the replay
    for line in signs:
        wire, best = line.split(" best: ")
        assert wire.split()[0] in pipe.labels + ["NONE"] and best.split()[0] in pipe.labels
    assert out[-1].startswith("sentence:")


def check_plugins(folder: Path, ns: dict, outputs: list, files: list) -> None:
    """The plugin module defines its kind and backend (tests/test_plugin_walkthrough.py installs and runs it)."""
    assert ns["MyRunner"].artifact == ns["OrtBasic"].name == "onnx-ort-basic"
    assert ns["MyRunner"].availability().ok


CHECKS = {"README.md": check_readme, "docs/api.md": check_api, "docs/plugins.md": check_plugins}
RUNNABLE = [p for p in PAGES if any(b.skip is None for b in python_blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=rel)
def test_python_blocks_run_in_order_in_an_empty_folder(page, tmp_path, capsys):
    assert Path.cwd() == tmp_path and not [p for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".db"]
    ns, outputs, files = run_page(page, tmp_path, capsys)
    check = CHECKS.get(rel(page))
    if check is not None:
        check(tmp_path, ns, outputs, files)


# -- fast checks of the pages themselves ----------------------------------------------------------------------
def test_pages_with_checks_still_have_their_blocks():
    assert set(CHECKS) <= {rel(p) for p in RUNNABLE}
    assert [b.skip is None for b in python_blocks(DOCS / "api.md")] == [True, True]


def test_not_run_blocks_are_few_and_say_why():
    skipped = [b for p in PAGES for b in python_blocks(p) if b.skip is not None]
    assert len(skipped) <= MAX_NOT_RUN, [f"{rel(b.page)}:{b.line}" for b in skipped]
    for b in skipped:
        assert len(b.skip) >= 10, f"{rel(b.page)}:{b.line}: say why the block does not run"
    for page in PAGES:  # every marker belongs to a python block
        markers = len(NOT_RUN.findall(page.read_text()))
        assert markers == sum(b.skip is not None for b in python_blocks(page)), f"{rel(page)}: a stray not-run marker"


def test_every_user_api_name_is_in_the_reference():
    api = (DOCS / "api.md").read_text()
    for name in signflow_zoo.__all__:
        if not name.startswith("__"):
            assert f"\n::: signflow_zoo.{name}\n" in api, f"docs/api.md: add '::: signflow_zoo.{name}'"
    assert "\n::: signflow_zoo.api\n" in api


REPO_PATH = re.compile(r"`((?:signflow_zoo|benchmarks|tests|plugins|deploy|\.ci)/[\w./-]*)`")
DOTTED = re.compile(r"`(signflow_zoo(?:\.\w+)+)")
NOT_MODULES = {"signflow_zoo.complete", "signflow_zoo.cluster_run_id"}  # MLflow tag names


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent is a module, not a package
        return False


def test_paths_and_module_names_in_the_docs_exist():
    """Paths like `signflow_zoo/serve/pipeline.py` and names like `signflow_zoo.data.loading.SPEC_FORMS` in
    README.md and docs/ name what is there (not the flat layout's `signflow_zoo/harness.py`)."""
    missing = []
    for page in PAGES:
        text = page.read_text()
        for path in set(REPO_PATH.findall(text)):
            if not (ROOT / path).exists():
                missing.append(f"{rel(page)}: {path}")
        for dotted in set(DOTTED.findall(text)) - NOT_MODULES:
            parts = dotted.split(".")
            for i in range(len(parts), 0, -1):
                module = ".".join(parts[:i])
                if _is_module(module):
                    obj = importlib.import_module(module)
                    try:
                        for attr in parts[i:]:
                            obj = getattr(obj, attr)
                    except AttributeError:
                        missing.append(f"{rel(page)}: {dotted}")
                    break
    assert not missing, missing


def test_docs_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page left out of the nav or a reference that does not
    resolve fails it."""
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        if not _is_module(module):
            pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()
