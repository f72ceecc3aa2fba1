"""The package's shape: every subpackage sits in the layers contract, no import cycles, a light user API."""

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

import signflow_zoo

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "signflow_zoo"
PLUGIN_CONTRACT = {"__init__.py", "api.py", "hookspecs.py", "plugins.py", "testing.py"}


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return [name.strip() for layer in layers for name in layer.split("|")]


def test_every_top_level_entry_is_a_layer_or_the_plugin_contract():
    layered = {name.removeprefix("signflow_zoo.") for name in _layers()}
    for entry in sorted(PACKAGE.iterdir()):
        if entry.name.startswith((".", "__pycache__")):
            continue
        if entry.is_dir():
            assert (entry / "__init__.py").is_file(), f"{entry.name}/ is not a package"
            assert entry.name in layered, f"subpackage {entry.name}/ is not in the layers contract (pyproject.toml)"
        else:
            assert entry.name in PLUGIN_CONTRACT, (
                f"{entry.name}: a module at the top level; modules live in a subpackage (docs/architecture.md)")
    # the five modules of the plugin contract and ten layers: a reader sees the whole package in one listing
    assert len([e for e in PACKAGE.iterdir() if not e.name.startswith((".", "__pycache__"))]) <= 15


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("signflow_zoo", exclude_type_checking_imports=True)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for module in sorted(edges):
        if module not in index:
            visit(module)
    # a package's __init__ re-exporting its own modules is not a cycle of the architecture
    real = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not real, f"import cycles: {real}"


@pytest.mark.parametrize("name", [n for n in signflow_zoo.__all__ if not n.startswith("__")])
def test_user_api_name_resolves_and_is_documented(name):
    value = getattr(signflow_zoo, name)
    assert (getattr(value, "__doc__", None) or "").strip(), f"signflow_zoo.{name} has no docstring"


def test_unknown_top_level_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        signflow_zoo.not_a_name  # noqa: B018


def test_importing_the_plugin_api_stays_light():
    code = ("import sys, signflow_zoo, signflow_zoo.api; "
            "print(sorted(m for m in ('torch', 'mlflow', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"import signflow_zoo.api pulled in {out.stdout.strip()}"
