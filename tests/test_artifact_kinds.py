"""Artifact kinds from plugins: built once from their source, cached by content, written atomically."""

import json
import logging
import multiprocessing
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from signflow_zoo.api import (FEATURE_DIM, ArtifactKind, BackendUnavailable, BuildContext, OrtRunner, ensure_artifact,
                              hookimpl)
from signflow_zoo.common.errors import BackendError, ModelFileError
from signflow_zoo.plugins import PluginRegistry
from signflow_zoo.testing import check_runner

BUILDS: list[str] = []  # build() calls in this process


class Copy(ArtifactKind):
    """The source graph, copied: the smallest kind a runner can consume."""

    name = "onnx-copy"
    source = "onnx"
    version = "1"
    main_file = "model.onnx"

    def build(self, ctx: BuildContext) -> dict:
        BUILDS.append(self.name)
        assert list(ctx.dest.iterdir()) == [] and ctx.calibration is None
        logging.getLogger().warning("converter advice nobody asked for")
        shutil.copy(ctx.source, ctx.dest / self.main_file)
        return {"copied_from": ctx.source.name}


class CopyOfCopy(Copy):
    name = "onnx-copy-copy"
    source = "onnx-copy"


class TwoFiles(Copy):
    """Like an OpenVINO IR: a main file and a weights file beside it."""

    name = "two-files"
    main_file = "model.xml"

    def build(self, ctx: BuildContext) -> dict:
        BUILDS.append(self.name)
        (ctx.dest / "model.xml").write_text("<net/>")
        (ctx.dest / "weights").mkdir()
        (ctx.dest / "weights" / "model.bin").write_bytes(ctx.source.read_bytes()[:64])
        return {}


class Calibrated(Copy):
    name = "calibrated"
    needs_calibration = True

    def build(self, ctx: BuildContext) -> dict:
        BUILDS.append(self.name)
        clips = sum(len(f) for f, m in ctx.calibration(10))
        shutil.copy(ctx.source, ctx.dest / self.main_file)
        return {"calibration_clips": clips}


class Failing(Copy):
    name = "failing"

    def build(self, ctx: BuildContext) -> dict:
        (ctx.dest / "partial.onnx").write_bytes(b"half")
        raise RuntimeError("converter crashed")


class Forgetful(Copy):
    name = "forgetful"

    def build(self, ctx: BuildContext) -> dict:
        (ctx.dest / "other.onnx").write_bytes(b"x")
        return {}


class Unavailable(Copy):
    name = "unavailable-here"

    def build(self, ctx: BuildContext) -> dict:
        raise BackendUnavailable("the converter needs a GPU")


class KindsPlugin:
    @hookimpl
    def register_artifact_kinds(self, register):
        for kind in (Copy, CopyOfCopy, TwoFiles, Calibrated, Failing, Forgetful, Unavailable):
            register(kind)


REGISTRY = PluginRegistry([KindsPlugin()], entry_points=False, environment=False)


class Calibration:
    def __init__(self, seed=0, fingerprint=None):
        self.seed = seed
        if fingerprint:
            self.fingerprint = fingerprint

    def __call__(self, n):
        rng = np.random.default_rng(self.seed)
        for start in range(0, n, 4):
            b = min(4, n - start)
            yield rng.standard_normal((b, 16, FEATURE_DIM)).astype(np.float32), np.ones((b, 16), bool)


@pytest.fixture
def arts(tiny_artifacts):
    """A private copy: ensure_artifact records into it."""
    return replace(tiny_artifacts, hashes=dict(tiny_artifacts.hashes), info=dict(tiny_artifacts.info), paths={})


def test_builds_once_caches_by_content_and_records_hash_and_info(arts, isolated_home, caplog):
    BUILDS.clear()
    logs = []
    path = ensure_artifact(arts, "onnx-copy", REGISTRY, log=logs.append)
    assert path.parent.parent == isolated_home / "artifacts" / "kinds" / "onnx-copy"
    assert path.read_bytes() == arts.onnx.read_bytes() and arts.path_for("onnx-copy") == path
    info = arts.info["onnx-copy"]
    assert arts.hashes["onnx-copy"] == info["sha256"] == info["files"]["model.onnx"] == arts.hashes["onnx"]
    assert info["source_sha256"] == arts.hashes["onnx"] and info["version"] == "1" and info["calibration"] is None
    assert info["build"] == {"copied_from": "tiny.onnx"}
    assert info["notes"] == ["WARNING: converter advice nobody asked for"]  # recorded, not printed
    assert "converter advice" not in caplog.text
    assert logs == ["building artifact 'onnx-copy' (v1) for conformance-tiny from 'onnx' ..."]
    fresh = replace(arts, hashes={k: v for k, v in arts.hashes.items() if k != "onnx-copy"}, paths={})
    assert ensure_artifact(fresh, "onnx-copy", REGISTRY, log=logs.append) == path  # cached: no second build
    assert BUILDS == ["onnx-copy"] and len(logs) == 1
    assert sorted(p.name for p in path.parent.parent.iterdir()) == [path.parent.name]  # no temporary left


def test_a_kind_built_from_a_kind_ensures_its_source_first(arts):
    BUILDS.clear()
    path = ensure_artifact(arts, "onnx-copy-copy", REGISTRY, log=lambda m: None)
    assert BUILDS == ["onnx-copy", "onnx-copy-copy"]
    assert arts.info["onnx-copy-copy"]["source_sha256"] == arts.hashes["onnx-copy"]
    assert path.read_bytes() == arts.onnx.read_bytes()


def test_builtin_kinds_are_returned_as_they_are_and_unknown_kinds_named(arts):
    assert ensure_artifact(arts, "onnx", REGISTRY) == arts.onnx
    with pytest.raises(BackendError, match="unknown artifact kind 'tensorrt'; known kinds: .*onnx-copy"):
        ensure_artifact(arts, "tensorrt", REGISTRY)
    with pytest.raises(BackendError, match="'onnx-copy' of preset 'conformance-tiny' has not been built.*ensure_artifact"):
        arts.path_for("onnx-copy")


def test_the_cache_key_follows_source_version_and_calibration(arts, tmp_path):
    first = ensure_artifact(arts, "onnx-copy", REGISTRY, log=lambda m: None)

    class Bumped(Copy):
        version = "2"

    class BumpedPlugin:
        @hookimpl
        def register_artifact_kinds(self, register):
            register(Bumped)

    bumped = PluginRegistry([BumpedPlugin()], entry_points=False, environment=False)
    assert ensure_artifact(replace(arts, paths={}), "onnx-copy", bumped, log=lambda m: None) != first
    other_source = tmp_path / "other.onnx"
    other_source.write_bytes(arts.onnx.read_bytes() + b"\0")
    moved = replace(arts, onnx=other_source, hashes={}, paths={})
    assert ensure_artifact(moved, "onnx-copy", REGISTRY, log=lambda m: None) != first

    paths = {cal: ensure_artifact(replace(arts, paths={}), "calibrated", REGISTRY, calibration=cal, log=lambda m: None)
             for cal in (Calibration(0), Calibration(1), Calibration(0, "data-v1"), Calibration(5, "data-v1"))}
    a, b, c, d = paths.values()
    assert len({a, b, c}) == 3 and c == d  # by content when no fingerprint is given, else by fingerprint


def test_calibration_is_handed_over_only_to_kinds_that_need_it(arts):
    with pytest.raises(BackendUnavailable, match="'calibrated' needs calibration data from the training split"):
        ensure_artifact(arts, "calibrated", REGISTRY, calibration=None)
    ensure_artifact(arts, "calibrated", REGISTRY, calibration=Calibration(fingerprint="split-abc"), log=lambda m: None)
    assert arts.info["calibrated"]["build"] == {"calibration_clips": 10}
    assert arts.info["calibrated"]["calibration"] == "split-abc"
    ensure_artifact(arts, "onnx-copy", REGISTRY, calibration=Calibration(), log=lambda m: None)  # Copy asserts None
    assert arts.info["onnx-copy"]["calibration"] is None


def test_a_multi_file_kind_is_hashed_by_its_listing_and_verified_on_reuse(arts):
    main = ensure_artifact(arts, "two-files", REGISTRY, log=lambda m: None)
    files = arts.info["two-files"]["files"]
    assert main.name == "model.xml" and sorted(files) == ["model.xml", "weights/model.bin"]
    assert arts.hashes["two-files"] not in files.values()  # the listing's hash covers the weights file too
    (main.parent / "weights" / "model.bin").write_bytes(b"tampered")
    with pytest.raises(ModelFileError, match=r"weights/model.bin: cached 'two-files' artifact .* does not match"):
        ensure_artifact(replace(arts, paths={}), "two-files", REGISTRY, log=lambda m: None)


def test_a_failed_build_leaves_nothing_behind(arts, isolated_home):
    with pytest.raises(BackendError, match="building artifact kind 'failing' for conformance-tiny failed: "
                                           "RuntimeError: converter crashed"):
        ensure_artifact(arts, "failing", REGISTRY, log=lambda m: None)
    with pytest.raises(BackendError, match="build\\(\\) wrote no 'model.onnx' into ctx.dest"):
        ensure_artifact(arts, "forgetful", REGISTRY, log=lambda m: None)
    with pytest.raises(BackendUnavailable, match="needs a GPU"):
        ensure_artifact(arts, "unavailable-here", REGISTRY, log=lambda m: None)
    kinds = isolated_home / "artifacts" / "kinds"
    assert [p for p in kinds.rglob("*") if p.is_file()] == []
    assert "failing" not in arts.paths and "forgetful" not in arts.hashes


class Slow(Copy):
    """Slow enough that concurrent builders overlap; checks that nobody sees the final folder half-built."""

    name = "slow"

    def build(self, ctx: BuildContext) -> dict:
        final_parent = ctx.dest.parent
        for part in range(5):
            (ctx.dest / f"part{part}.bin").write_bytes(bytes([part]) * 1000)
            time.sleep(0.05)
            for done in (p for p in final_parent.iterdir() if not p.name.startswith(".")):
                assert len(list(done.iterdir())) == 7, "a published folder is incomplete"
        shutil.copy(ctx.source, ctx.dest / self.main_file)
        return {}


class SlowPlugin:
    @hookimpl
    def register_artifact_kinds(self, register):
        register(Slow)


def _build_slow(args):
    onnx, home = args
    from signflow_zoo.backends.runner import Artifacts

    reg = PluginRegistry([SlowPlugin()], entry_points=False, environment=False)
    arts = Artifacts("race", 7, [], {}, onnx=Path(onnx))
    return str(ensure_artifact(arts, "slow", reg, home=Path(home), log=lambda m: None)), arts.hashes["slow"]


def test_concurrent_builders_of_one_key_all_get_the_same_complete_folder(tiny_artifacts, tmp_path):
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_build_slow, [(str(tiny_artifacts.onnx), str(tmp_path))] * 3)
    assert len(set(results)) == 1
    folder = Path(results[0][0]).parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.onnx", "part0.bin", "part1.bin", "part2.bin", "part3.bin", "part4.bin", "signflow-artifact.json"])
    assert list(folder.parent.iterdir()) == [folder]  # the losers' temporary folders are gone
    assert json.loads((folder / "signflow-artifact.json").read_text())["sha256"] == results[0][1]


class CopyRunner(OrtRunner):
    name = "onnx-copy-runner"
    artifact = "onnx-copy"


class RunnerPlugin(KindsPlugin):
    @hookimpl
    def register_runners(self, register):
        register(CopyRunner)


def test_the_conformance_kit_builds_the_kind_a_runner_consumes(tmp_path, tiny_artifacts):
    reg = PluginRegistry([RunnerPlugin()], entry_points=False, environment=False)
    report = check_runner(reg.get("onnx-copy-runner").cls, tmp_path, artifacts=tiny_artifacts, registry=reg)
    assert report.ok and report.available, report.problems
    assert report.parity["max_abs"] < 1e-5 and (tmp_path / "artifacts" / "kinds" / "onnx-copy").is_dir()
    assert "onnx-copy" not in tiny_artifacts.paths  # the shared artifacts are left as they were
    no_kind = PluginRegistry(entry_points=False, environment=False)
    report = check_runner(CopyRunner, tmp_path, artifacts=tiny_artifacts, registry=no_kind)
    assert not report.ok and "artifact must be one of torch, onnx, onnx-optimized, onnx-fp16, got 'onnx-copy'" in report.problems[0]
