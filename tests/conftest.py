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
def tiny_artifacts(tmp_path_factory):
    from signflow_zoo.testing import tiny_artifacts

    return tiny_artifacts(tmp_path_factory.mktemp("tiny-artifacts"))


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
