import json
import subprocess
import sys

import pytest

from signflow_zoo.model import zoo as zoo_mod
from signflow_zoo.cli.commands import main
from signflow_zoo.common.errors import ZooError
from signflow_zoo.model.zoo import Zoo, get_model_config, list_model_configs, list_presets, parse_zoo

SEED_PRESETS = ["lightweight", "baseline", "medium", "large", "xlarge"]
GOOD = """
[[entry]]
name = "mine"
d_model = 64
heads = 4
layers = 2
dim_ff = 128
dropout = 0.1
feature_dropout = 0.1
pooling_dropout = 0.1
use_case = "mine"
"""


def test_builtin_zoo_has_the_five_seed_presets():
    assert list_presets() == SEED_PRESETS
    large = get_model_config("large")
    assert (large.d_model, large.heads, large.layers, large.dim_ff) == (384, 8, 6, 1536)
    assert (large.dropout, large.feature_dropout, large.pooling_dropout) == (0.30, 0.15, 0.25)
    assert set(list_model_configs()) == set(SEED_PRESETS)


def test_repo_root_zoo_is_the_packaged_one():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "zoo.toml"
    assert root.read_text() == zoo_mod.builtin_zoo_text()


def test_to_model_kwargs_uses_seed_names():
    kw = get_model_config("baseline").to_model_kwargs(num_classes=100)
    assert kw["num_classes"] == 100 and kw["d_model"] == 192 and kw["nhead"] == 6 and kw["num_layers"] == 4
    assert kw["input_dim"] == 469


def _with(replace_from, replace_to):
    return GOOD.replace(replace_from, replace_to)


MALFORMED = [
    ("unknown key", _with('use_case = "mine"', 'use_case = "mine"\ncolour = "red"'), "'colour'", "unknown key"),
    ("missing key", _with("dim_ff = 128\n", ""), "'dim_ff'", "missing"),
    ("wrong type", _with("layers = 2", 'layers = "two"'), "'layers'", "integer"),
    ("bool as int", _with("layers = 2", "layers = true"), "'layers'", "integer"),
    ("heads not dividing", _with("heads = 4", "heads = 5"), "'heads'", "divide"),
    ("non-positive", _with("layers = 2", "layers = 0"), "'layers'", "integer in [1, 64], got 0"),
    ("negative width", _with("dim_ff = 128", "dim_ff = -8"), "'dim_ff'", "integer in [1, 16384], got -8"),
    ("absurd width", _with("d_model = 64", "d_model = 1048576"), "'d_model'", "[3, 4096], got 1048576"),
    ("absurd depth", _with("layers = 2", "layers = 100000"), "'layers'", "[1, 64], got 100000"),
    ("too many heads", _with("heads = 4", "heads = 128"), "'heads'", "[1, 64], got 128"),
    ("zero epochs", _with('use_case = "mine"', 'use_case = "mine"\nepochs = 0'), "'epochs'", "[1, 10000]"),
    ("dropout out of range", _with("dropout = 0.1\nfeature", "dropout = 1.5\nfeature"), "'dropout'", "[0, 1)"),
    ("duplicate name", GOOD + GOOD, "'name'", "duplicate"),
]


@pytest.mark.parametrize("case,text,key,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_zoo_names_file_entry_and_key(tmp_path, case, text, key, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ZooError) as err:
        zoo_mod.load_zoo_file(path)
    msg = str(err.value)
    assert str(path) in msg and "entry #" in msg and key in msg and words in msg


@pytest.mark.parametrize("case,text,key,words", MALFORMED[:3] + MALFORMED[4:5], ids=[m[0] for m in MALFORMED[:3] + MALFORMED[4:5]])
def test_cli_exits_2_without_traceback_on_malformed_zoo(tmp_path, capsys, case, text, key, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["--zoo", str(path), "presets"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and key in err and "Traceback" not in err


def test_invalid_toml_and_empty_file(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text("[[entry]\nname=")
    with pytest.raises(ZooError, match="not valid TOML"):
        zoo_mod.load_zoo_file(bad)
    with pytest.raises(ZooError, match="no \\[\\[entry\\]\\]"):
        parse_zoo("", "empty.toml")
    with pytest.raises(ZooError, match="not found"):
        zoo_mod.load_zoo_file(tmp_path / "missing.toml")


def test_user_zoo_adds_entries_by_flag_and_env(tmp_path, monkeypatch, capsys):
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    z = Zoo.load(path)
    assert z.names() == SEED_PRESETS + ["mine"]
    assert z.get("mine").source == str(path)
    monkeypatch.setenv("SIGNFLOW_ZOO_FILE", str(path))
    assert "mine" in list_presets()
    assert main(["presets", "--json"]) == 0
    assert "mine" in [r["name"] for r in json.loads(capsys.readouterr().out)]


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ZooError) as err:
        get_model_config("huge")
    assert "huge" in str(err.value) and "lightweight" in str(err.value)
    assert [e.name for e in Zoo.load().select("all")] == SEED_PRESETS
    assert [e.name for e in Zoo.load().select("large, baseline")] == ["large", "baseline"]


def test_presets_json_counts_parameters_by_instantiating(capsys):
    from signflow_zoo.model.network import build_model, count_parameters

    assert main(["presets", "--json", "--num-classes", "10"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == SEED_PRESETS
    for r in rows:
        assert r["params"] == count_parameters(build_model(get_model_config(r["name"]), num_classes=10))
        assert r["gflop_per_seq"] > 0
    params = [r["params"] for r in rows]
    assert params == sorted(params)  # larger presets really are larger


def test_console_script_runs_as_a_user_would():
    out = subprocess.run([sys.executable, "-m", "signflow_zoo.cli", "presets", "--preset"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
