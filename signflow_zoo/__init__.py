"""signflow-zoo: a model zoo and benchmark harness for SignFlow's sign-language transformers.

The user API is this package's top level: every name in :data:`__all__` is documented in ``docs/api.md`` and
imported on first use (``import signflow_zoo`` stays light: plugins that import :mod:`signflow_zoo.api` do
not pull in PyTorch or MLflow). Plugins use :mod:`signflow_zoo.api` only; :mod:`signflow_zoo.hookspecs` is
the plugin contract. Each ``signflow-zoo`` command is one call on these names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from signflow_zoo.hookspecs import hookimpl

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    # presets (the zoo)
    "list_presets": "signflow_zoo.model.zoo",
    "get_model_config": "signflow_zoo.model.zoo",
    "list_model_configs": "signflow_zoo.model.zoo",
    "describe_presets": "signflow_zoo.model.presets",
    "ZooEntry": "signflow_zoo.model.zoo",
    # data
    "load_data": "signflow_zoo.data.loading",
    "SyntheticSpec": "signflow_zoo.data.synthetic",
    "generate": "signflow_zoo.data.synthetic",
    "Clip": "signflow_zoo.data.clip",
    # model: build, train, save, export
    "SignTransformer": "signflow_zoo.model.network",
    "build_model": "signflow_zoo.model.network",
    "SignTrainer": "signflow_zoo.model.training",
    "TrainingConfig": "signflow_zoo.model.training",
    "train_preset": "signflow_zoo.bench.weights",
    "load_checkpoint": "signflow_zoo.model.checkpoint",
    "export_to_onnx": "signflow_zoo.model.export",
    "optimize_onnx_model": "signflow_zoo.model.export",
    "export_checkpoint": "signflow_zoo.model.export",
    "import_original": "signflow_zoo.model.original",
    # backends
    "describe_backends": "signflow_zoo.plugins",
    "get_registry": "signflow_zoo.plugins",
    # bench and results
    "BenchConfig": "signflow_zoo.bench.harness",
    "run_bench": "signflow_zoo.bench.harness",
    "sync_results": "signflow_zoo.results.files",
    "collect_records": "signflow_zoo.report.records",
    "comparison_table": "signflow_zoo.report.tables",
    "compare_runs": "signflow_zoo.report.compare",
    # serving
    "SignFlowInferencePipeline": "signflow_zoo.serve.pipeline",
    "PipelineConfig": "signflow_zoo.serve.pipeline",
    "Prediction": "signflow_zoo.serve.pipeline",
    "stream_payloads": "signflow_zoo.serve.replay",
}
_RENAMED = {"sync_results": "sync"}  # public name -> name in its module

__all__ = ["__version__", "hookimpl", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'signflow_zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


if TYPE_CHECKING:  # what type checkers and the docs see
    from signflow_zoo.bench.harness import BenchConfig, run_bench
    from signflow_zoo.bench.weights import train_preset
    from signflow_zoo.data.clip import Clip
    from signflow_zoo.data.loading import load_data
    from signflow_zoo.data.synthetic import SyntheticSpec, generate
    from signflow_zoo.model.checkpoint import load_checkpoint
    from signflow_zoo.model.export import export_checkpoint, export_to_onnx, optimize_onnx_model
    from signflow_zoo.model.network import SignTransformer, build_model
    from signflow_zoo.model.original import import_original
    from signflow_zoo.model.presets import describe_presets
    from signflow_zoo.model.training import SignTrainer, TrainingConfig
    from signflow_zoo.model.zoo import ZooEntry, get_model_config, list_model_configs, list_presets
    from signflow_zoo.plugins import describe_backends, get_registry
    from signflow_zoo.report.compare import compare_runs
    from signflow_zoo.report.records import collect_records
    from signflow_zoo.report.tables import comparison_table
    from signflow_zoo.results.files import sync as sync_results
    from signflow_zoo.serve.pipeline import PipelineConfig, Prediction, SignFlowInferencePipeline
    from signflow_zoo.serve.replay import stream_payloads
