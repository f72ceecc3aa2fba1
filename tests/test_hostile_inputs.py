"""Inputs a user hands in that once ended in a traceback, hours of work or silently wrong answers: documents nested
thousands of levels deep, a clip in pixel coordinates, a pipeline shared by threads, a backend that fails at every
batch size above 1."""

from __future__ import annotations

import threading
import time

import faulty_backends
import numpy as np
import pytest
from conftest import TINY_DATA

from signflow_zoo.backends.runner import Runner
from signflow_zoo.cli.commands import main
from signflow_zoo.common.documents import MAX_DEPTH
from signflow_zoo.common.errors import (
    CheckpointError,
    InputError,
    ModelFileError,
    ZooError,
)
from signflow_zoo.data.synthetic import SyntheticSpec, generate
from signflow_zoo.serve.pipeline import SignFlowInferencePipeline
from signflow_zoo.serve.replay import (
    MAX_GLIDE_FRAMES,
    check_stream_clips,
    replay_stream,
    stream_payloads,
    stream_rows,
    stream_spans,
)

DEEP = 10_000


def one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "RecursionError" not in err, err
    for name in names:
        assert name in err, err
    return err


@pytest.fixture(scope="module")
def clips():
    made, _ = generate(SyntheticSpec(num_classes=4, num_signers=1, clips_per_signer_per_class=1, seed=3))
    return [c.raw for c in made]


# -- documents nested too deeply ---------------------------------------------------------------------
def test_a_zoo_file_nested_ten_thousand_levels_is_one_line_naming_it(tmp_path, capsys):
    zoo = tmp_path / "deep-zoo.toml"
    zoo.write_text("[[entry]]\nname = \"deep\"\nextra = " + "[" * DEEP + "]" * DEEP + "\n")
    assert main(["--zoo", str(zoo), "presets"]) == 2
    err = one_line_error(capsys, str(zoo))
    assert f"at most {MAX_DEPTH}" in err

    from signflow_zoo.model.zoo import load_zoo_file

    with pytest.raises(ZooError, match="deep-zoo.toml: nested"):
        load_zoo_file(zoo)
    inline = tmp_path / "inline-zoo.toml"  # inline tables nest the same way
    inline.write_text("[[entry]]\nname = \"deep\"\nx = " + "{a = " * 100 + "1" + "}" * 100 + "\n")
    with pytest.raises(ZooError, match="inline-zoo.toml: nested"):
        load_zoo_file(inline)


def test_a_checkpoint_with_deeply_nested_metadata_is_one_line_naming_it(tiny_artifacts, tmp_path, clips, capsys):
    import torch

    from signflow_zoo.model.checkpoint import read_checkpoint

    bad = tmp_path / "deep.pt"
    blob = torch.load(tiny_artifacts.checkpoint, map_location="cpu", weights_only=True)
    blob["metadata"] = '{"labels": ' + "[" * DEEP + "]" * DEEP + "}"
    torch.save(blob, bad)
    with pytest.raises(CheckpointError, match="deep.pt: checkpoint metadata: nested"):
        read_checkpoint(bad)
    clip = tmp_path / "clip.npy"
    np.save(clip, clips[0])
    assert main(["predict", str(clip), "--model", str(bad)]) == 2
    one_line_error(capsys, str(bad), "nested")


def test_an_onnx_file_with_deeply_nested_metadata_is_one_line_naming_it(tiny_artifacts, tmp_path, clips, capsys,
                                                                         monkeypatch):
    import onnx

    from signflow_zoo.backends.artifacts import artifacts_from_model_file
    from signflow_zoo.serve import modelfile

    proto = onnx.load(str(tiny_artifacts.onnx))
    for prop in proto.metadata_props:
        if prop.key == "labels":
            prop.value = "[" * DEEP + "]" * DEEP
    bad = tmp_path / "deep.onnx"
    onnx.save(proto, str(bad))
    clip = tmp_path / "clip.npy"
    np.save(clip, clips[0])
    assert main(["predict", str(clip), "--model", str(bad)]) == 2  # metadata read with the onnx package
    one_line_error(capsys, str(bad), "'labels'", "nested")
    with pytest.raises(ModelFileError, match="deep.onnx: metadata_props 'labels' is nested"):
        artifacts_from_model_file(bad)  # read with ONNX Runtime
    monkeypatch.setattr(modelfile, "_onnx_proto", lambda path: None)  # no onnx package: ONNX Runtime reads it
    with pytest.raises(ModelFileError, match="deep.onnx: metadata_props 'labels' is nested"):
        modelfile.read_model_metadata(bad)


def test_json_files_nested_too_deeply_are_named_or_rebuilt(tmp_path, monkeypatch):
    from signflow_zoo.bench import roofline
    from signflow_zoo.common.errors import DataError
    from signflow_zoo.data.formats.lsfb import _split_ids

    deep = "[" * DEEP + "]" * DEEP
    split = tmp_path / "train.json"
    split.write_text(deep)
    with pytest.raises(DataError, match="train.json: nested"):  # a data set's file: named
        _split_ids(split)
    cache = roofline.cache_path(1, tmp_path)  # a derived cache: measured again
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(deep)
    fresh = {"format": roofline.FORMAT_VERSION, "ceilings": {"fp32": 1.0}}
    monkeypatch.setattr(roofline, "measure", lambda threads, **kw: fresh)
    assert roofline.load_or_measure(1, home=tmp_path) == fresh


# -- a clip in pixel coordinates -------------------------------------------------------------------
def test_stream_refuses_a_clip_in_pixel_coordinates_naming_it(tiny_artifacts, tmp_path, clips, capsys):
    first, second = tmp_path / "normalized.npy", tmp_path / "pixels.npy"
    np.save(first, clips[0][:40])
    np.save(second, clips[1][:40] * 1920.0)
    t0 = time.perf_counter()
    assert main(["stream", str(first), str(second), "--model", str(tiny_artifacts.onnx), "--no-realtime"]) == 2
    assert time.perf_counter() - t0 < 10
    one_line_error(capsys, "clip 2 of 2 (pixels)", "pixel coordinates", "normalized")
    with pytest.raises(InputError, match="clip 2 of 2: coordinates reach"):
        check_stream_clips([clips[0], clips[1] * 1000.0])


def test_a_glide_between_far_apart_clips_is_capped(clips):
    far = clips[1][:40].copy()
    far[:, :126] += 5.0  # normalized but far from the first clip's end: uncapped, 2,000+ glide frames
    spans, total = stream_spans([clips[0][:40], far], rest_frames=5)
    assert total == sum(e - s for s, e in spans) + 3 * 5 + MAX_GLIDE_FRAMES - 1
    assert sum(1 for _ in stream_rows([clips[0][:40], far], rest_frames=5)) == total

    runner = SlowStatefulRunner(delay=0.0)
    pipe = SignFlowInferencePipeline.from_runner(runner, LABELS)
    with pytest.warns(RuntimeWarning, match=f"capped at {MAX_GLIDE_FRAMES} frames"):
        summary = replay_stream(pipe, [clips[0][:40], far], rest_frames=5)
    assert summary["glides_capped"] == 1 and summary["frames"] == total
    with pytest.raises(InputError, match="pixel coordinates"):  # pixels: refused, whatever the cap
        replay_stream(pipe, [clips[0][:40], clips[1][:40] * 1000.0])


# -- one pipeline, several threads ---------------------------------------------------------------------
LABELS = ["a", "b", "c"]


class SlowStatefulRunner(Runner):
    """Keeps its input between two steps of a call (like a runner reusing buffers): two threads inside it at once
    would mix their inputs. Counts how many threads were ever inside together."""

    name = "test-stateful"
    artifact = "onnx"

    def __init__(self, delay: float = 0.002):
        super().__init__()
        self.prepared = True
        self.delay = delay
        self.inside = self.most_inside = 0
        self.buffer = None

    def infer(self, features, mask):
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        self.buffer = features
        time.sleep(self.delay)
        total = self.buffer.sum(axis=(1, 2)).astype(np.float64)
        self.inside -= 1
        return np.stack([np.sin(total), np.cos(total), np.sin(2 * total)], axis=1).astype(np.float32)


def decision(d: dict) -> dict:
    """What process_sequence decided on a clip (not the stream's state or sentence, nor the timings)."""
    return {k: d[k] for k in ("label", "candidate", "confidence", "probability", "margin", "threshold", "alternatives",
                              "rejected_by", "frames")}


def test_threads_sharing_one_pipeline_are_serialized(clips):
    runner = SlowStatefulRunner()
    pipe = SignFlowInferencePipeline.from_runner(runner, LABELS)
    clip_list = [c[:40] for c in clips]
    expected = [pipe.process_sequence(c).to_dict() for c in clip_list]  # one thread, one after another
    payloads = list(stream_payloads(clip_list, rest_frames=12))
    per_thread = 60
    got: dict[int, list] = {}
    indices: list[int] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            got[i] = [pipe.process_sequence(c).to_dict() for c in clip_list]
            for payload in payloads[i * per_thread:(i + 1) * per_thread]:
                indices.append(pipe.process_frame(payload).frame_index)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert runner.most_inside == 1  # never two threads in the runner
    for i in range(4):  # same answers as sequential calls: nothing mixed between threads
        assert [decision(d) for d in got[i]] == [decision(d) for d in expected]
    n = min(len(payloads), 4 * per_thread)
    assert sorted(indices) == list(range(n))  # every frame counted once: none lost, none twice


def test_spawned_pipelines_in_threads_match_sequential_streams(clips):
    runner = SlowStatefulRunner(delay=0.001)
    pipe = SignFlowInferencePipeline.from_runner(runner, LABELS)
    streams = [[c[:40] for c in clips[i:] + clips[:i]] for i in range(4)]

    def replay(p, stream):
        p.reset()
        out = [p.process_frame(x) for x in stream_payloads(stream, rest_frames=12)]
        last = p.flush()
        return [(q.frame_index, q.label, q.candidate, round(q.confidence, 9)) for q in out + [last] if q and q.ended]

    expected = [replay(pipe.spawn(), s) for s in streams]
    assert all(expected)
    got: dict[int, list] = {}
    pipes = [pipe.spawn() for _ in streams]
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, replay(pipes[i], streams[i])))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [got[i] for i in range(4)] == expected
    assert runner.most_inside == 1  # one runner shared by the spawned pipelines: its calls serialized


# -- a backend that fails at every batch size above 1 -------------------------------------------------
@pytest.mark.slow
def test_a_backend_failing_above_batch_1_keeps_batch_1_parity_and_accuracy(tiny_zoo_file, warm_home, monkeypatch):
    from signflow_zoo.bench import roofline
    from signflow_zoo.bench.harness import BenchConfig, run_bench
    from signflow_zoo.plugins import PluginRegistry

    monkeypatch.setattr(roofline, "load_or_measure", lambda threads, **kw: {"ceilings": {"fp32": 1.0}})  # ~20 s saved

    registry = PluginRegistry([faulty_backends], entry_points=False)
    cfg = BenchConfig.quick(presets="tiny", backends="test-fail-above-1", data=TINY_DATA, exporter="legacy",
                            track=False, stream=False, plots=False, zoo_file=str(tiny_zoo_file), progress=False,
                            batch_sizes=(1, 4))
    cfg.timing.timeout = 30.0
    cfg.timing.min_time = 0.05
    lines: list[str] = []
    doc = run_bench(cfg, log=lines.append, registry=registry)
    (rec,) = doc["records"]
    test_size = rec["params"]["test_size"]
    first = min(64, test_size)  # the first batch tried: the largest parity input / accuracy chunk

    assert rec["status"] == "ok", rec["reason"]
    assert set(rec["latency"]) == {"1"} and rec["latency"]["1"]["p50_ms"] > 0  # batch 1 timed
    assert set(rec["latency_errors"]) == {"4"}  # batch 4: a latency error only
    assert "RuntimeError: out of memory at this batch size" in rec["latency_errors"]["4"]
    par = rec["parity"]
    assert par["ok"] and par["batch"] == 1 and par["samples"] == 3 + 2 + first
    assert f"parity ran at batch 1: batch {first} failed (RuntimeError: out of memory" in par["note"]
    acc = rec["accuracy"]
    assert acc["n"] == test_size and acc["batch"] == 1 and acc["agreement_top1"] == 1.0
    assert f"accuracy ran at batch 1: batch {first} failed" in acc["note"]
    assert any("parity ran at batch 1" in line for line in lines)
    assert any("accuracy ran at batch 1" in line for line in lines)
