"""Property-based fuzzing (Hypothesis) of everything a user or a client hands signflow-zoo.

Inputs: the command line (numbers of every sign and size, NaN/inf spellings, empty and unicode strings, for
every command's options), ``zoo.toml`` documents (wrong types, missing keys, absurd values, broken TOML),
streaming frame payloads, checkpoint metadata and ONNX ``metadata_props``.

The contract checked for every generated input: the command exits 0, or exits 2 with exactly ONE line on
stderr and no traceback, and a failed command wrote nothing (no result file, no checkpoint, no partial
output). Library entry points either return or raise the documented ``SignFlowError`` subclass.

Commands that would do real work (bench, train) get inputs that fail validation early (an unknown preset or
backend after everything else was parsed and checked), or tiny data with a handful of examples. Generated
command-line strings hold no NUL character: no shell can pass one (``execve`` cannot).

Hypothesis settings, per test: a small ``max_examples`` (the whole module runs in CI in well under a
minute), ``deadline=None`` (a shared 2-core machine makes a single example slow now and then) and
``derandomize=True`` (the same examples on every run: CI is stable and a failure reproduces by rerunning).
For a longer hunt, ``SIGNFLOW_ZOO_FUZZ=20 pytest tests/test_fuzz.py`` multiplies every ``max_examples`` by 20
and explores randomly instead.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import TINY_ZOO
from signflow_zoo.cli.commands import main
from signflow_zoo.common.errors import SignFlowError
from signflow_zoo.data.features import FEATURE_DIM

FUZZ = int(os.environ.get("SIGNFLOW_ZOO_FUZZ", "0") or 0)
SMALLEST_DATA = "synthetic:classes=2,signers=3,clips=1,seed=1"  # one signer each for train, val and test


def fuzz_settings(max_examples: int):
    return settings(max_examples=max_examples * max(1, FUZZ), deadline=None, derandomize=not FUZZ,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large], database=None)


# -- strategies ------------------------------------------------------------------------------------------

ARG_CHARS = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
SPECIAL_NUMBERS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "1e-999", "0", "-0", "0.0",
                   "-0.0", "1_000", "0x10", " 7 ", "+5", "١٢", "１２", "1e3", "1.5", "2e-7", "9" * 400, "-" + "9" * 400,
                   "", " ", "4096", "4097", "65535", "65536", str(2**32 - 1), str(2**32), str(2**63), "00001"]
numbers = st.one_of(
    st.integers().map(str),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(SPECIAL_NUMBERS),
    st.lists(st.integers(min_value=-10, max_value=10**6), min_size=0, max_size=20).map(lambda v: ",".join(map(str, v))),
    st.text(ARG_CHARS, max_size=12),
)
texts = st.one_of(st.text(ARG_CHARS, max_size=40), st.sampled_from(["", " ", "-", "--", "-x", "é", "名前", "\n", "a\nb",
                                                                  "../../etc", "~", "/", ".", "$HOME", "%s", "{}"]))
# Integers in model files are small or far beyond any bound, never "large but allowed": a validation gap then
# fails the test instead of allocating tens of gigabytes (a sequence length of 10**7 frames is 19 GB of features).
safe_ints = st.one_of(st.integers(min_value=-3, max_value=64), st.sampled_from([-(2**40), 2**40, 2**63, 10**30]))
json_scalars = st.one_of(st.none(), st.booleans(), safe_ints, st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)

# command -> (argv that fails after every option was checked, numeric options, text options)
COMMANDS = {
    "presets": (["--zoo", "no-such-zoo.toml", "presets"], ["--num-classes"], []),
    "train": (["train", "--preset", "no-such-preset", "--no-track"], ["--epochs", "--lr", "--batch-size", "--seed"],
              ["--data", "--output"]),
    "bench": (["bench", "--preset", "no-such-preset", "--no-track"],
              ["--batch-sizes", "--threads", "--warmup", "--min-iters", "--min-time", "--timeout", "--seed", "--epochs"],
              ["--backends", "--json", "--experiment", "--schedule", "--exporter"]),
    "report": (["report"], ["--batch-size"], ["--since", "--preset", "--backend", "--host", "--compare", "--plots",
                                              "--experiment", "--format"]),
    "export": (["export", "no-such-checkpoint.pt"], [], ["--output", "--exporter"]),
    "sync": (["sync"], [], ["--results", "--experiment"]),
    "import-original": (["import-original", "no-such-checkpoint.pt", "--output", "imported.pt"], ["--heads"],
                        ["--labels", "--output"]),
    "predict": (["predict", "no-such-clip.npy", "--model", "no-such-model.onnx"],
                ["--threshold", "--temperature", "--threads"], ["--backend", "--instance", "--format"]),
    "stream": (["stream", "no-such-clip.npy", "--model", "no-such-model.onnx", "--no-realtime"],
               ["--fps", "--rest-frames", "--threshold", "--temperature", "--threads"], ["--backend", "--format"]),
}


PLUGIN_VERDICTS = ("zoo-home", "plugins")  # the cache of third-party plugin probes (signflow_zoo.plugins)


def _files(root: Path) -> set[str]:
    """Every path under ``root`` but the plugin-probe cache (and the zoo home folder that holds it), which any
    command that loads plugins may fill, like an import cache; anything else in the zoo home still counts."""
    rel = (p.relative_to(root) for p in root.rglob("*"))
    return {str(r) for r in rel if r.parts[:2] != PLUGIN_VERDICTS and r.parts != PLUGIN_VERDICTS[:1]}


def check_contract(argv: list[str], capsys, root: Path) -> tuple[int, str]:
    """Run ``main(argv)`` in-process; assert exit 0, or exit 2 with one stderr line, no traceback, nothing written."""
    before = _files(root)
    zoo_file = os.environ.get("SIGNFLOW_ZOO_FILE")
    code = main(argv)
    assert os.environ.get("SIGNFLOW_ZOO_FILE") == zoo_file, "main() left --zoo in the environment"
    out, err = capsys.readouterr()
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1, (argv, err)
        assert _files(root) == before, (argv, sorted(_files(root) - before))
    return code, out


def _option(flag: str, value: str, joined: bool) -> list[str]:
    return [f"{flag}={value}"] if joined else [flag, value]


# -- the command line --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
@fuzz_settings(40)
@given(data=st.data())
def test_cli_options_of_every_command(command, data, capsys, tmp_path):
    base, number_flags, text_flags = COMMANDS[command]
    argv = list(base)
    flags = number_flags + text_flags
    for flag in data.draw(st.lists(st.sampled_from(flags), min_size=1, max_size=4, unique=True), label="flags"):
        value = data.draw(numbers if flag in number_flags else texts, label=flag)
        argv += _option(flag, value, data.draw(st.booleans(), label="joined"))
    code, _ = check_contract(argv, capsys, tmp_path)
    if command != "sync":  # the base argv cannot succeed
        assert code == 2


@fuzz_settings(40)
@given(value=numbers, joined=st.booleans())
def test_ui_port_parses_or_is_one_line_error(value, joined, capsys):
    from signflow_zoo.cli.commands import build_parser

    try:
        args = build_parser().parse_args(["ui", *_option("--port", value, joined)])
    except SystemExit as exc:
        assert exc.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    else:  # parsed: only a port the UI can bind (the UI itself is not started here)
        assert 1 <= args.port <= 65535


@fuzz_settings(40)
@given(options=st.lists(st.tuples(st.sampled_from(["classes", "signers", "clips", "seed", "difficulty", "colour", ""]),
                                  numbers), max_size=4), sep=st.sampled_from([",", ", ", ";"]))
def test_synthetic_data_specs(options, sep, capsys, tmp_path):
    spec = "synthetic:" + sep.join(f"{k}={v}" for k, v in options)
    code, _ = check_contract(["bench", "--data", spec, "--preset", "no-such-preset", "--no-track"], capsys, tmp_path)
    assert code == 2


@fuzz_settings(30)
@given(argv=st.lists(texts, max_size=5))
def test_arbitrary_argument_lists(argv, capsys, tmp_path):
    # no command may start real work from junk: only those without side effects can succeed
    argv = [a for a in argv if a.strip() not in ("bench", "train", "ui", "doctor", "stream", "predict", "export")]
    check_contract(argv, capsys, tmp_path)


@pytest.mark.slow
@fuzz_settings(1)
@example(lr="1", seed=2**32 - 1, batch=4096)  # every range's far end at once
@given(lr=st.one_of(st.floats(min_value=1e-6, max_value=1.0), st.sampled_from(["1", "1e-300", "0.999"])),
       seed=st.one_of(st.integers(min_value=0, max_value=2**32 - 1), st.just(2**32 - 1)),
       batch=st.integers(min_value=1, max_value=4096))
def test_train_on_tiny_data_with_any_valid_numbers(lr, seed, batch, capsys, tmp_path):
    """Real training with numbers from anywhere in their ranges: a checkpoint, or one line and none."""
    zoo = tmp_path / "zoo.toml"
    zoo.write_text(TINY_ZOO)
    out = tmp_path / "out" / "tiny.pt"
    shutil.rmtree(out.parent, ignore_errors=True)
    code, _ = check_contract(["--zoo", str(zoo), "train", "--preset", "tiny", "--data", SMALLEST_DATA, "--epochs", "1",
                              "--no-track", "--no-progress", "--lr", str(lr), "--seed", str(seed), "--batch-size",
                              str(batch), "--output", str(out)], capsys, tmp_path)
    if code == 0:
        from signflow_zoo.model.checkpoint import load_checkpoint

        model, _ = load_checkpoint(out)
        assert all(bool(p.isfinite().all()) for p in model.state_dict().values() if p.is_floating_point())
    else:
        assert not out.exists()


# -- zoo.toml documents -------------------------------------------------------------------------------------

ZOO_KEYS = ["name", "d_model", "heads", "layers", "dim_ff", "dropout", "feature_dropout", "pooling_dropout",
            "use_case", "epochs"]
VALID_ENTRY = {"name": "fz", "d_model": 24, "heads": 2, "layers": 1, "dim_ff": 48, "dropout": 0.1,
               "feature_dropout": 0.1, "pooling_dropout": 0.1, "use_case": "fuzz", "epochs": 2}
toml_scalars = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1),
                         st.sampled_from([0, -1, 3, 7, 10**6, 2**31, 2**63 - 1]),
                         st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=12),
                         st.sampled_from(["tiny", "Bad Name", "", "lightweight"]))
toml_values = st.one_of(toml_scalars, st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
                        st.dictionaries(st.sampled_from(["a", "b"]), st.integers(min_value=0, max_value=9), max_size=2))


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string, or a TOML error (also a case worth fuzzing)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"


@st.composite
def zoo_documents(draw) -> str:
    if draw(st.integers(min_value=0, max_value=9)) == 0:  # sometimes no TOML at all
        return draw(st.text(max_size=200))
    entries = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        entry = dict(VALID_ENTRY, name=draw(st.sampled_from(["fz", "fz2", "tiny", "lightweight"])))
        for key in draw(st.lists(st.sampled_from(ZOO_KEYS + ["extra", "d-model"]), max_size=4, unique=True)):
            action = draw(st.sampled_from(["drop", "change", "change"]))
            if action == "drop":
                entry.pop(key, None)
            else:
                entry[key] = draw(toml_values)
        entries.append(entry)
    top = draw(st.sampled_from(["", "", "title = 'x'\n", "entry = 3\n"]))
    return top + "".join("[[entry]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in e.items()) for e in entries)


@fuzz_settings(150)
@given(doc=zoo_documents())
def test_zoo_documents_parse_or_name_the_problem(doc):
    from signflow_zoo.model.zoo import ZooError, parse_zoo

    try:
        entries = parse_zoo(doc, "fuzz.toml")
    except ZooError as exc:
        assert str(exc).startswith("fuzz.toml") and "\n" not in str(exc).strip()
        return
    for e in entries:  # accepted: a model of these sizes can be described
        assert e.d_model % e.heads == 0 and e.layers >= 1 and e.dim_ff >= 1 and 0 <= e.dropout < 1


@fuzz_settings(40)
@given(doc=zoo_documents())
def test_zoo_documents_through_the_cli(doc, capsys, tmp_path):
    path = tmp_path / "user-zoo.toml"
    path.write_text(doc, encoding="utf-8", errors="surrogatepass")
    # a valid zoo reaches the backend selection, which fails: no model is built, no data generated
    code, _ = check_contract(["--zoo", str(path), "bench", "--preset", "all", "--backends", "no-such-backend",
                              "--no-track"], capsys, tmp_path)
    assert code == 2


# -- frame payloads -----------------------------------------------------------------------------------------

coordinate = st.one_of(st.floats(min_value=-2.0, max_value=2.0), st.floats(allow_nan=True, allow_infinity=True),
                       st.integers(min_value=-3, max_value=3), st.integers(min_value=-(2**2000), max_value=2**2000),
                       st.booleans(), st.none(), st.text(max_size=3), st.sampled_from([1e4, -1e4, 1e4 + 1, 5e-324]))
point = st.one_of(st.lists(coordinate, min_size=3, max_size=3), st.lists(coordinate, max_size=5),
                  st.tuples(coordinate, coordinate, coordinate), json_scalars)


def part(n: int):
    good = st.lists(st.lists(st.floats(min_value=-1.0, max_value=1.0), min_size=3, max_size=3), min_size=n, max_size=n)
    return st.one_of(st.none(), st.just([]), good, st.lists(point, min_size=n, max_size=n), st.lists(point, max_size=n + 2),
                     json_values)


metadata = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "averageConfidence": st.one_of(st.floats(allow_nan=True, allow_infinity=True), json_scalars),
    "leftHandVisible": json_scalars, "rightHandVisible": json_scalars}))
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "hands": st.one_of(json_values, st.fixed_dictionaries({}, optional={"left": part(21), "right": part(21)})),
        "pose": part(33), "metadata": metadata, "face": json_values}),
)


@fuzz_settings(300)
@given(payload=payloads)
def test_frame_payloads_parse_or_name_the_field(payload):
    from signflow_zoo.common.errors import PayloadError
    from signflow_zoo.serve.payload import MAX_ABS_COORD, parse_payload

    try:
        row, info = parse_payload(payload)
    except PayloadError as exc:
        assert exc.field and str(exc).startswith("frame payload field")
        return
    assert row.shape == (225,) and row.dtype == np.float32
    assert np.isfinite(row).all() and (np.abs(row) <= MAX_ABS_COORD).all()
    assert info.confidence is None or 0.0 <= info.confidence <= 1.0


@fuzz_settings(100)
@given(row=st.lists(st.floats(min_value=-1e4, max_value=1e4, width=32), min_size=225, max_size=225),
       hide=st.sets(st.sampled_from(["left", "right", "pose"])))
def test_valid_rows_survive_the_payload_round_trip(row, hide):
    from signflow_zoo.serve.payload import parse_payload, payload_from_raw

    raw = np.array(row, dtype=np.float32)
    for name, (start, stop) in {"left": (0, 63), "right": (63, 126), "pose": (126, 225)}.items():
        if name in hide:
            raw[start:stop] = 0
    back, _ = parse_payload(json.loads(json.dumps(payload_from_raw(raw))))  # through JSON, as over the wire
    assert np.array_equal(back, raw)


# -- model files --------------------------------------------------------------------------------------------

kwargs_values = {"input_dim": st.one_of(st.just(FEATURE_DIM), safe_ints), "num_classes": safe_ints,
                 "d_model": st.one_of(st.just(48), safe_ints), "nhead": st.one_of(st.just(4), safe_ints),
                 "num_layers": st.one_of(st.just(2), safe_ints), "dim_feedforward": st.one_of(st.just(96), safe_ints),
                 "dropout": st.one_of(st.just(0.1), st.floats(allow_nan=True, allow_infinity=True))}


@st.composite
def checkpoint_metadata(draw, base: dict) -> object:
    if draw(st.integers(min_value=0, max_value=7)) == 0:
        return draw(json_values)
    meta = json.loads(json.dumps(base))
    for key in draw(st.lists(st.sampled_from(["model_kwargs", "labels", "preset", "feature_version", "calibration",
                                              "model_version", "format", "data_fingerprint"]), max_size=3, unique=True)):
        meta[key] = draw(json_values) if draw(st.booleans()) else meta.pop(key, None)
    if isinstance(meta.get("model_kwargs"), dict) and draw(st.booleans()):
        kw = meta["model_kwargs"]
        for name in draw(st.lists(st.sampled_from(sorted(kwargs_values) + ["bogus"]), max_size=3, unique=True)):
            kw[name] = draw(kwargs_values.get(name, json_scalars))
    return meta


class ModelFiles(dict):
    """The fixture's parts; a short repr keeps Hypothesis' failure reports readable."""

    def __init__(self, **parts):
        super().__init__(parts)

    def __repr__(self) -> str:
        return "ModelFiles(tiny model: state, meta, clip, onnx)"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, tiny_artifacts):
    """The tiny model's checkpoint (state and metadata) and ONNX bytes, and a clip to predict on."""
    import onnx
    import torch

    blob = torch.load(tiny_artifacts.checkpoint, map_location="cpu", weights_only=True)
    folder = tmp_path_factory.mktemp("fuzz-models")
    clip = folder / "clip.npy"
    np.save(clip, np.random.default_rng(0).uniform(0.2, 0.8, (30, 225)).astype(np.float32))
    return ModelFiles(state=blob["state_dict"], meta=json.loads(blob["metadata"]), clip=clip,
                      onnx=onnx.load(str(tiny_artifacts.onnx)), onnx_path=tiny_artifacts.onnx)


@fuzz_settings(25)
@given(data=st.data())
def test_checkpoint_metadata_loads_or_is_a_checkpoint_error(data, model_files, tmp_path):
    import torch

    from signflow_zoo.model.checkpoint import load_checkpoint, read_checkpoint
    from signflow_zoo.common.errors import CheckpointError

    meta = data.draw(checkpoint_metadata(model_files["meta"]), label="metadata")
    raw = json.dumps(meta) if data.draw(st.integers(min_value=0, max_value=9)) else data.draw(json_values)
    path = tmp_path / "fuzz.pt"
    torch.save({"state_dict": model_files["state"], "metadata": raw}, path)
    for reader in (read_checkpoint, load_checkpoint):
        try:
            reader(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)


@fuzz_settings(10)
@given(fps=st.one_of(st.floats(min_value=0.1, max_value=1000.0), st.sampled_from([0.1, 1000.0])),
       rest=st.integers(min_value=0, max_value=40), threshold=st.floats(min_value=0.0, max_value=1.0),
       temperature=st.one_of(st.floats(min_value=1e-300, max_value=100.0), st.just(100.0)),
       threads=st.integers(min_value=1, max_value=2))
def test_stream_replays_with_any_valid_numbers(fps, rest, threshold, temperature, threads, model_files, capsys,
                                               tmp_path):
    """A real replay (as fast as possible, few rest frames) with the other numbers from anywhere in their ranges."""
    code, out = check_contract(["stream", str(model_files["clip"]), "--model", str(model_files["onnx_path"]),
                                "--no-realtime", "--format", "json", "--fps", repr(fps), "--rest-frames", str(rest),
                                "--threshold", repr(threshold), "--temperature", repr(temperature),
                                "--threads", str(threads)], capsys, tmp_path)
    if code == 0:
        summary = json.loads(out.strip().splitlines()[-1])["summary"]
        assert summary["frames"] >= 30


@fuzz_settings(40)
@given(data=st.data())
def test_onnx_metadata_serves_or_is_one_line(data, model_files, tmp_path, capsys):
    import onnx

    from signflow_zoo.model.export import set_metadata

    proto = onnx.ModelProto()
    proto.CopyFrom(model_files["onnx"])
    props = {p.key: p.value for p in proto.metadata_props}
    for key in data.draw(st.lists(st.sampled_from(sorted(props) + ["calibration", "class_thresholds", "bogus"]),
                                  max_size=3, unique=True), label="keys"):
        value = data.draw(st.one_of(json_values.map(json.dumps), st.text(max_size=30)), label=key)
        props[key] = value
    del proto.metadata_props[:]
    set_metadata(proto, props)
    model = tmp_path / "fuzz.onnx"
    onnx.save(proto, str(model))
    code, out = check_contract(["predict", str(model_files["clip"]), "--model", str(model), "--format", "json"],
                               capsys, tmp_path)
    if code == 0:
        pred = json.loads(out)["predictions"][0]
        assert 0.0 <= pred["confidence"] <= 1.0 and math.isfinite(pred["confidence"])


@fuzz_settings(15)
@given(data=st.data())
@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_checkpoint_metadata_through_predict(data, model_files, tmp_path, capsys):
    import torch

    meta = data.draw(checkpoint_metadata(model_files["meta"]), label="metadata")
    model = tmp_path / "fuzz.pt"
    torch.save({"state_dict": model_files["state"], "metadata": json.dumps(meta)}, model)
    check_contract(["predict", str(model_files["clip"]), "--model", str(model)], capsys, tmp_path)


def test_library_errors_are_signflow_errors():
    """The fuzz contract relies on this: every error a user can cause derives from SignFlowError (exit 2)."""
    from signflow_zoo.common import errors
    from signflow_zoo.common.output_paths import OutputPathError
    from signflow_zoo.report.records import ReportError

    for cls in (errors.ZooError, errors.DataError, errors.CheckpointError, errors.ModelFileError, errors.PayloadError,
                errors.TrackingError, OutputPathError, ReportError):
        assert issubclass(cls, SignFlowError) and cls.exit_code == 2
