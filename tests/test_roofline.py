"""The measured roofline: ceilings per precision, cached per machine, and the FLOP count it divides."""

import json
from types import SimpleNamespace

import pytest

from signflow_zoo.bench import roofline as rl
from signflow_zoo.common.errors import InputError

TINY_SHAPES = ((64, 64, 64), (130, 96, 48))


@pytest.fixture
def tiny_shapes(monkeypatch):
    monkeypatch.setattr(rl, "SHAPES", TINY_SHAPES)


def test_ceilings_measure_each_precision_the_cpu_has(tiny_shapes):
    c = rl.ceilings(1)
    flags = set(rl.cpu_identity()["flags"])
    assert c["fp32"] > 0
    assert ("bf16" in c) == bool(flags & set(rl.BF16_FLAGS))
    assert ("int8" in c) == bool(flags & set(rl.INT8_FLAGS))
    rec = json.loads(rl.cache_path(1).read_text())
    engines = {r["engine"] for r in rec["measurements"]}
    assert any(e.startswith("torch.matmul float32") for e in engines)
    assert any(e.startswith("onnxruntime MatMul ") for e in engines)
    # the ceiling is the best row of its precision, and every shape was measured for every engine
    for prec, value in c.items():
        assert value == max(r["gflops"] for r in rec["measurements"] if r["precision"] == prec)
    assert len(rec["measurements"]) == len(engines) * len(TINY_SHAPES)


@pytest.mark.slow  # over 2 s: out of the fast loop (-m 'not slow'), still in CI
def test_cached_per_machine_and_threads_and_refreshed_on_request(tiny_shapes, isolated_home):
    path1, path2 = rl.cache_path(1), rl.cache_path(2)
    assert path1 != path2 and path1.parent == isolated_home / "machine" and path1.name.startswith("roofline-")
    first = rl.load_or_measure(1)
    assert path1.is_file() and not path2.exists()
    # a second call reads the file; prove it by planting a value no measurement would give
    planted = {**first, "ceilings": {**first["ceilings"], "fp32": 12345.0}}
    path1.write_text(json.dumps(planted))
    assert rl.ceilings(1)["fp32"] == 12345.0
    assert rl.ceilings(1, refresh=True)["fp32"] != 12345.0
    assert json.loads(path1.read_text())["ceilings"]["fp32"] != 12345.0


def test_unreadable_cache_is_measured_again(tiny_shapes):
    path = rl.cache_path(1)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert rl.ceilings(1)["fp32"] > 0
    assert json.loads(path.read_text())["threads"] == 1


def test_measure_restores_torch_threads(tiny_shapes):
    import torch

    before = torch.get_num_threads()
    rl.measure(1 if before != 1 else 2, shapes=TINY_SHAPES, repeats=1, min_time=0.001)
    assert torch.get_num_threads() == before


def test_roofline_share_and_precision_mapping():
    c = {"fp32": 400.0, "bf16": 800.0, "int8": 1600.0}
    r = rl.roofline(1.6, 32, 100.0, "fp32", c)
    assert r["achieved_gflops"] == pytest.approx(512.0) and r["ceiling_gflops"] == 400.0
    assert r["share"] == pytest.approx(1.28)
    assert rl.roofline(1.6, 1, 8.0, "tf32", c)["ceiling_gflops"] == 400.0
    assert rl.roofline(1.6, 1, 8.0, "fp16", c)["ceiling_gflops"] == 400.0
    assert rl.roofline(1.6, 1, 8.0, "bf16", c)["share"] == pytest.approx(0.25)
    assert rl.roofline(1.6, 1, 8.0, "int8", c)["share"] == pytest.approx(0.125)
    # a CPU without bf16 units computes a bf16 hint in fp32; without an int8 ceiling there is no share
    assert rl.roofline(1.6, 1, 8.0, "bf16", {"fp32": 400.0})["ceiling_gflops"] == 400.0
    assert rl.roofline(1.6, 1, 8.0, "int8", {"fp32": 400.0})["share"] is None


@pytest.mark.parametrize("args, word", [((0.0, 1, 5.0, "fp32"), "gflop_per_seq"), ((1.0, 0, 5.0, "fp32"), "batch"),
                                        ((1.0, 1, -1.0, "fp32"), "p50_ms"), ((1.0, 1, float("nan"), "fp32"), "p50_ms"),
                                        ((1.0, 1, 5.0, "int4"), "precision")])
def test_roofline_rejects_nonsense(args, word):
    with pytest.raises(InputError, match=word):
        rl.roofline(*args, {"fp32": 100.0})


def test_measure_rejects_bad_threads():
    with pytest.raises(InputError, match="threads"):
        rl.measure(0)


def test_flop_estimate_matches_the_graph_and_the_profiler(tiny_artifacts):
    """``estimate_gflops`` (hand count) == MACs of the exported graph's MatMul/Gemm/Conv nodes at real shapes;
    torch.profiler agrees on the matrix products (it has no FLOP formula for the CPU Conv1d)."""
    from signflow_zoo.model.network import estimate_gflops

    kw = tiny_artifacts.model_kwargs
    entry = SimpleNamespace(d_model=kw["d_model"], dim_ff=kw["dim_feedforward"], layers=kw["num_layers"],
                            heads=kw["nhead"])
    est = estimate_gflops(entry, num_classes=kw["num_classes"])
    g1 = rl.graph_gflops(tiny_artifacts.onnx, batch=1, frames=64)
    g3 = rl.graph_gflops(tiny_artifacts.onnx, batch=3, frames=64)
    assert g1["total"] == pytest.approx(est, rel=1e-3)
    assert g3["total"] == pytest.approx(g1["total"], rel=1e-9)  # per sequence, independent of batch
    assert g1["Conv"] > 0 and g1["MatMul"] > 0
    prof = rl.profiler_gflops(tiny_artifacts.torch_model(), batch=1, frames=64)
    conv = sum(v for k, v in prof.items() if "conv" in k)
    assert prof["total"] - conv == pytest.approx(g1["MatMul"] + g1.get("Gemm", 0.0), rel=1e-2)
    # twice the frames: the linear parts double, attention grows faster
    assert rl.graph_gflops(tiny_artifacts.onnx, batch=1, frames=128)["total"] > 2 * g1["total"]
