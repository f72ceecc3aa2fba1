"""Shared fixtures: an isolated zoo home and MLflow store per test, tiny models, a tiny zoo entry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_ZOO = """
[[entry]]
name = "tiny"
d_model = 24
heads = 2
layers = 1
dim_ff = 48
dropout = 0.1
feature_dropout = 0.1
pooling_dropout = 0.1
use_case = "tests"
epochs = 2
"""
# small, signer-split synthetic data: seconds to generate and train on
TINY_DATA = "synthetic:classes=4,signers=6,clips=2,seed=1"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own zoo cache and local MLflow store; nothing leaks into the checkout."""
    home = tmp_path / "zoo-home"
    monkeypatch.setenv("SIGNFLOW_ZOO_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("SIGNFLOW_ZOO_FILE", raising=False)
    monkeypatch.delenv("SIGNFLOW_ZOO_BLOCK_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def tiny_zoo_file(tmp_path) -> Path:
    p = tmp_path / "tiny-zoo.toml"
    p.write_text(TINY_ZOO)
    return p


@pytest.fixture(scope="session")
def trained_tiny_home(tmp_path_factory) -> Path:
    """A zoo home holding the tiny entry trained once for the whole test run (checkpoint, data cache,
    legacy-exported artifacts): tests that need a trained model copy it instead of training again."""
    from signflow_zoo.backends.artifacts import build_artifacts
    from signflow_zoo.bench.harness import Bench, BenchConfig

    root = tmp_path_factory.mktemp("trained-tiny")
    zoo_file = root / "tiny-zoo.toml"
    zoo_file.write_text(TINY_ZOO)
    home = root / "zoo-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGNFLOW_ZOO_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        bench = Bench(BenchConfig(presets="tiny", data=TINY_DATA, zoo_file=str(zoo_file), track=False, progress=False),
                      log=lambda msg: None)
        ckpt, _ = bench.checkpoint(bench.entries[0])
        build_artifacts(ckpt, exporter="legacy", home=home, log=lambda msg: None)
    return home


@pytest.fixture
def warm_home(isolated_home, trained_tiny_home) -> Path:
    """This test's zoo home, pre-filled with the session's trained tiny model (no training in the test)."""
    import shutil

    shutil.copytree(trained_tiny_home, isolated_home, dirs_exist_ok=True)
    return isolated_home


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    from signflow_zoo.testing import tiny_artifacts

    return tiny_artifacts(tmp_path_factory.mktemp("tiny-artifacts"))


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
