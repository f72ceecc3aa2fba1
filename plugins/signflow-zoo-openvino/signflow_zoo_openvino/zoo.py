"""Everything this plugin takes from signflow-zoo, in one place.

Until signflow-zoo's public plugin API (``signflow_zoo.api``) can build artifact kinds, ``kind_path``
builds a kind on first use from the runner's artifacts, content-addressed by the source file's hash,
the kind and its version, with calibration batches from the checkpoint's own training split. Once the
harness builds kinds itself, ``artifacts.path_for(kind.name)`` answers first and this fallback is unused.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from signflow_zoo import hookimpl
from signflow_zoo.errors import BackendError
from signflow_zoo.export import file_sha256, quiet_logs
from signflow_zoo.runners import Availability, BackendUnavailable, Runner

__all__ = ["hookimpl", "Availability", "BackendUnavailable", "Runner", "BuildContext", "kind_path", "quiet_logs",
           "training_batches"]

BUILT_IN_KINDS = ("torch", "onnx", "onnx-optimized")


@dataclass
class BuildContext:
    preset: str
    source: Path
    dest: Path  # a fresh empty folder
    calibration: Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]] | None = None
    log: Callable[[str], None] = field(default=print)


def training_batches(spec: str, seed: int = 0) -> Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]]:
    """Calibration batches from the TRAINING split of a data spec (never from validation or test)."""
    from signflow_zoo.artifacts import zoo_home
    from signflow_zoo.harness import load_splits_cached

    def batches(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        train = load_splits_cached(spec, seed, zoo_home()).train
        order = np.random.default_rng(seed).permutation(len(train))
        for i in range(0, len(order), batch_size):
            idx = np.sort(order[i:i + batch_size])
            yield np.ascontiguousarray(train.features[idx]), np.ascontiguousarray(train.mask[idx])

    return batches


def _calibration_for(artifacts):
    spec = (artifacts.info or {}).get("calibration_data")
    if not spec and artifacts.checkpoint is not None:
        from signflow_zoo.checkpoint import read_checkpoint

        spec = read_checkpoint(artifacts.checkpoint)[1].get("data_spec")
    return training_batches(spec) if spec else None


def kind_path(artifacts, kind, log: Callable[[str], None] = print) -> Path:
    """The file of artifact kind ``kind`` (an ArtifactKind class) for these artifacts, built when missing."""
    try:
        return artifacts.path_for(kind.name)
    except BackendError:
        pass  # the harness does not know this kind yet: build it here
    if kind.source in BUILT_IN_KINDS:
        source = artifacts.path_for(kind.source)
    else:
        source = kind_path(artifacts, kind.source_kind, log)
    key = hashlib.sha256(f"{file_sha256(source)}|{kind.name}|{kind.version}".encode()).hexdigest()[:16]
    root = Path(artifacts.workdir or Path(source).parent) / "kinds"
    final = root / f"{kind.name}-{key}"
    if (final / kind.main_file).is_file():
        return final / kind.main_file
    calibration = _calibration_for(artifacts) if kind.needs_calibration else None
    if kind.needs_calibration and calibration is None:
        raise BackendUnavailable(f"artifact {kind.name!r} needs calibration data, but the checkpoint names no "
                                 "training data (train it with `signflow-zoo train` or `bench`)")
    tmp = root / f".{kind.name}-{key}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kind().build(BuildContext(artifacts.preset, Path(source), tmp, calibration, log))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final / kind.main_file
