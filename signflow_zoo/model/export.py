"""ONNX export with truly dynamic batch and frame axes, verification against PyTorch, and optimization.

Exporter choice: the dynamo exporter (``torch.onnx.export(dynamo=True)``, needs onnxscript) is the
default: it is the supported path. It is given an example batch of 2 because a batch-1 example bakes
batch=1 into a Reshape. The legacy TorchScript exporter (``exporter="legacy"``) also works for this
model, is ~40x faster to run, but is deprecated upstream. Either way the artifact is verified by running
it in ONNX Runtime at several batch sizes and frame counts against the PyTorch model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from signflow_zoo.common.cachefiles import temp_path
from signflow_zoo.common.errors import ModelFileError
from signflow_zoo.common.onnxrt import open_session
from signflow_zoo.data.features import FEATURE_DIM, FEATURE_VERSION, SEQ_LEN

if TYPE_CHECKING:
    from signflow_zoo.model.training import SignTrainer

OPSET = 18
INPUT_NAMES = ["features", "mask"]
OUTPUT_NAMES = ["logits"]
INPUT_LAYOUT = f"features: float32 [batch, frames, {FEATURE_DIM}]; mask: bool [batch, frames] (True = valid frame)"
VERIFY_BATCHES = (1, 3, 8)
VERIFY_FRAMES = (16, 64, 128)
EXPORTERS = ("dynamo", "legacy")


@dataclass
class ExportInfo:
    path: str
    exporter: str
    opset: int
    sha256: str
    nodes: int
    seconds: float
    verified: list[dict[str, Any]] = field(default_factory=list)
    max_abs_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def quiet_logs():
    """The exporters print progress banners and deprecation warnings; keep the user's terminal clean."""
    buf = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # ORT's optimizer logs through the root logger
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                yield buf
        finally:
            logging.disable(logging.NOTSET)


def export_to_onnx(
    model: torch.nn.Module | SignTrainer,
    save_path: str | Path,
    input_shape: tuple[int, int, int] = (1, 64, FEATURE_DIM),
    verify: bool = True,
    metadata: dict[str, Any] | None = None,
    exporter: str = "dynamo",
    opset: int = OPSET,
    labels: list[str] | None = None,
    calibration: dict[str, Any] | None = None,
) -> ExportInfo:
    """Export ``model`` to ``save_path`` with dynamic batch and frame axes; verify it when asked.

    ``input_shape`` gives the example's frames and features; its batch is raised to at least 2 so that
    no exporter can bake batch=1 into the graph. ``metadata`` (preset, labels, ...) is stored in the
    model's metadata_props so that the file can be served alone. ``labels`` (one per class, in class
    order) fills the metadata's label list; given neither, the file gets the labels "0".."N-1", marked
    ``default_labels`` so that whoever serves it is told to pass real ones.

    ``calibration`` (``trainer.calibration``, or a checkpoint's ``calibration`` metadata) writes the
    temperature and per-class thresholds the streaming pipeline applies, as ``signflow-zoo export`` does
    (:func:`serving_metadata`): without it the file is served at temperature 1.0 with no class thresholds, so it
    accepts and rejects other signs than the ``.pt`` of the same training run. ``model`` may be the
    :class:`~signflow_zoo.model.training.SignTrainer` itself: its model, ``class_names`` and ``calibration``
    are used (``labels=``/``calibration=``, when given, win). A calibration that disagrees with ``metadata``'s
    own entries is a ``ValueError``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if not isinstance(model, torch.nn.Module):  # a SignTrainer: its model, labels and calibration
        trainer = model
        net = getattr(trainer, "model", None)
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"export_to_onnx: model must be a torch.nn.Module or a SignTrainer, got "
                            f"{type(trainer).__name__}")
        model = net
        labels = labels if labels is not None else trainer.class_names
        calibration = calibration if calibration is not None else trainer.calibration
    serving = _serving_labels(model, metadata, labels)
    if calibration is not None:
        from signflow_zoo.model.checkpoint import calibration_problem

        problem = calibration_problem(calibration, len(serving["labels"]))
        if problem is not None:
            raise ValueError(f"export_to_onnx: calibration= is not a calibration record: {problem.removeprefix('checkpoint ')}")
        entries = {k: v for k, v in serving_metadata({"calibration": calibration}).items()
                   if k in ("calibration_temperature", "class_thresholds", "calibration")}
        clash = [k for k, v in entries.items() if k in (metadata or {}) and (metadata or {})[k] != v]
        if clash:
            raise ValueError(f"export_to_onnx: calibration= and metadata[{clash[0]!r}] differ; pass the calibration once")
        serving.update(entries)
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    _, frames, feat = input_shape
    was_training = model.training
    model = model.eval().cpu()
    example = (torch.randn(2, max(frames, 8), feat), torch.ones(2, max(frames, 8), dtype=torch.bool))
    tmp = temp_path(save_path, ".tmp.onnx")  # unique per process: concurrent exports never share it
    t0 = time.perf_counter()
    try:
        with quiet_logs() as log:
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=65536)
                frames_dim = torch.export.Dim("frames", min=2, max=65536)
                torch.onnx.export(
                    model, example, str(tmp), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                    dynamic_shapes={"features": {0: batch, 1: frames_dim}, "mask": {0: batch, 1: frames_dim}},
                    dynamo=True, opset_version=opset, external_data=False,
                )
            else:
                torch.onnx.export(
                    model, example, str(tmp), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                    dynamic_axes={"features": {0: "batch", 1: "frames"}, "mask": {0: "batch", 1: "frames"},
                                  "logits": {0: "batch"}},
                    dynamo=False, opset_version=opset,
                )
    except Exception as exc:  # noqa: BLE001 - report the exporter's own words
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export ({exporter}) failed: {type(exc).__name__}: {exc}\n{log.getvalue()[-2000:]}") from exc
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    import onnx

    proto = onnx.load(str(tmp))
    meta = {"exporter": exporter, "opset": str(opset), "input_layout": INPUT_LAYOUT}
    for k, v in {**(metadata or {}), **serving}.items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    tmp.unlink(missing_ok=True)
    _save_atomic(onnx, proto, save_path)
    info = ExportInfo(str(save_path), exporter, opset, file_sha256(save_path), len(proto.graph.node), seconds)
    if verify:
        info.verified = verify_onnx(model, save_path)
        info.max_abs_error = max(v["max_abs_error"] for v in info.verified)
    return info


def _num_classes(model: torch.nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        return n
    with torch.no_grad():  # a model without the attribute: ask it
        out = model(torch.zeros(1, 8, getattr(model, "input_dim", FEATURE_DIM)), torch.ones(1, 8, dtype=torch.bool))
    return int(out.shape[-1])


def _serving_labels(model: torch.nn.Module, metadata: dict[str, Any] | None, labels) -> dict[str, Any]:
    """The label entries of the metadata: ``labels`` if given, the metadata's own, else "0".."N-1"."""
    n = _num_classes(model)
    given = (metadata or {}).get("labels")
    if labels is not None:
        labels = [str(x) for x in labels]
        if given is not None and list(given) != labels:
            raise ValueError("export_to_onnx: labels= and metadata['labels'] differ; pass the labels once")
    elif given is not None:
        labels = list(given)
    else:
        return {"labels": [str(i) for i in range(n)], "num_classes": n, "default_labels": True}
    if len(labels) != n:
        raise ValueError(f"export_to_onnx: {len(labels)} labels for a model with {n} classes")
    return {"labels": labels, "num_classes": n}


def _save_atomic(onnx, proto, path: Path) -> None:
    """Save through a unique temp file and a rename: a reader never loads half a model."""
    tmp = temp_path(path, ".tmp.onnx")
    try:
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def set_metadata(proto, meta: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in meta.items():
        if k in existing:
            existing[k].value = v
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v


def read_metadata(path: str | Path, raw: dict[str, str] | None = None) -> dict[str, Any]:
    """The model file's metadata_props, JSON values decoded (labels come back as a list).

    ``raw``: the props already read (e.g. with the ``onnx`` package); else they are read with ONNX Runtime. A value
    nested deeper than :data:`~signflow_zoo.common.documents.MAX_DEPTH` levels is a :class:`ModelFileError` naming
    the file and the key (not a ``RecursionError``)."""
    from signflow_zoo.common.documents import MAX_DEPTH, text_depth

    if raw is None:
        raw = open_session(path).get_modelmeta().custom_metadata_map
    for key, value in raw.items():
        depth = text_depth(value) if isinstance(value, str) else 0
        if depth > MAX_DEPTH:
            raise ModelFileError(f"{path}: metadata_props {key!r} is nested {depth} levels deep; at most {MAX_DEPTH} "
                                 "are accepted (a corrupt or hostile file?)")
    return decode_metadata(raw)


def decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """metadata_props values are strings; JSON ones (labels, model_kwargs, numbers) are decoded."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def verify_onnx(
    model: torch.nn.Module,
    path: str | Path,
    batches=VERIFY_BATCHES,
    frames=VERIFY_FRAMES,
    atol: float = 1e-4,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Run the artifact in ONNX Runtime (CPU) at every batch x frames and compare with PyTorch."""
    sess = open_session(path)
    gen = torch.Generator().manual_seed(seed)
    results = []
    model = model.eval()
    for b in batches:
        for t in frames:
            x = torch.randn(b, t, model.input_dim, generator=gen)  # type: ignore[call-overload]  # SignTransformer attr
            mask = torch.rand(b, t, generator=gen) > 0.1
            with torch.no_grad():
                ref = model(x, mask).numpy()
            out = sess.run(None, {"features": x.numpy(), "mask": mask.numpy()})[0]
            err = float(np.abs(out - ref).max())
            results.append({"batch": b, "frames": t, "max_abs_error": err})
            if out.shape != ref.shape or not err <= atol:
                raise RuntimeError(
                    f"{path}: ONNX output differs from PyTorch at batch={b}, frames={t}: "
                    f"shape {out.shape} vs {ref.shape}, max abs error {err:.3g} > {atol}"
                )
    return results


@dataclass
class OptimizeReport:
    src: str
    dst: str
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    fusions: dict[str, int]
    steps: list[str]
    sha256: str
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _op_counts(proto) -> Counter:
    return Counter(n.op_type for n in proto.graph.node)


def optimize_onnx_model(
    src: str | Path,
    dst: str | Path,
    num_heads: int = 0,
    hidden_size: int = 0,
    use_transformer_optimizer: bool = True,
) -> OptimizeReport:
    """Derive an optimized artifact: ORT's transformer fusions (when they apply), then ORT's offline
    extended graph optimization (constant folding, node fusions) saved to ``dst``.

    Returns what changed: node counts before/after, op types that appeared (fusions) and a plain note
    when nothing could be fused. The saved graph may contain ORT contrib ops, so it is meant for ONNX
    Runtime only (which is who consumes it).
    """
    import onnx
    import onnxruntime as ort

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ModelFileError(f"{src}: ONNX model file not found")
    try:
        before = onnx.load(str(src))
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{src}: cannot parse ONNX model: {str(exc)[:200]}") from None
    ops_before = _op_counts(before)
    dst.parent.mkdir(parents=True, exist_ok=True)
    steps: list[str] = []
    stage = src
    tmp = temp_path(dst, ".stage1.onnx")
    final = temp_path(dst, ".tmp.onnx")
    if use_transformer_optimizer:
        try:
            from onnxruntime.transformers import optimizer as ort_optimizer

            with quiet_logs():
                opt = ort_optimizer.optimize_model(
                    str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
                )
                stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
                opt.save_model_to_file(str(tmp))
            stage = tmp
            steps.append(
                "transformer optimizer: " + (", ".join(f"{k} x{v}" for k, v in stats.items()) or "nothing fused")
            )
        except Exception as exc:  # noqa: BLE001 - the offline pass below still runs; say what happened
            steps.append(f"transformer optimizer failed: {type(exc).__name__}: {str(exc)[:200]}")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(final)
    try:
        open_session(stage, so)
        steps.append("ORT offline graph optimization (extended) saved")
        after = onnx.load(str(final))
    finally:
        tmp.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
    # keep the serving metadata on the derived artifact
    set_metadata(after, {p.key: p.value for p in before.metadata_props} | {"optimized": "true"})
    _save_atomic(onnx, after, dst)
    ops_after = _op_counts(after)
    fusions = {op: n for op, n in ops_after.items() if op not in ops_before}
    if fusions:
        note = "fused: " + ", ".join(f"{op} x{n}" for op, n in sorted(fusions.items()))
    else:
        note = "no fusion found: the optimized graph has only the original op types"
    return OptimizeReport(
        str(src), str(dst), sum(ops_before.values()), sum(ops_after.values()), dict(ops_before),
        dict(ops_after), fusions, steps, file_sha256(dst), note,
    )


def export_checkpoint(checkpoint: str | Path, output: str | Path | None = None, exporter: str = "dynamo",
                      optimize: bool = False) -> dict[str, Any]:
    """Export a signflow-zoo checkpoint to ONNX with its serving metadata (verified), optionally optimized.

    ``output`` defaults to the checkpoint's path with ``.onnx``; the optimized graph goes next to it as
    ``NAME.optimized.onnx``. Returns ``{"export": ExportInfo.to_dict(), "optimize": {...}}`` (``optimize``
    only when asked, without the per-op counts). What ``signflow-zoo export`` runs.
    """
    from signflow_zoo.model.checkpoint import load_checkpoint
    from signflow_zoo.common.output_paths import check_output_file

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    # every output checked before any work: regular files (or new), never the checkpoint; a symlink is written through
    given = Path(output) if output is not None else Path(checkpoint).with_suffix(".onnx")
    reads = [("the checkpoint being exported", checkpoint)]
    out = check_output_file(given, "--output" if output is not None else "the default --output", reads)
    opt_out = None
    if optimize:
        opt_out = check_output_file(given.with_name(given.stem + ".optimized.onnx"), "--optimize (its output)",
                                    [*reads, ("the ONNX export of this command", out)])
    model, meta = load_checkpoint(checkpoint)  # before anything is written: a bad checkpoint leaves no file
    info = export_to_onnx(model, out, metadata=serving_metadata(meta), exporter=exporter)
    result: dict[str, Any] = {"export": info.to_dict()}
    if opt_out is not None:
        kw = meta["model_kwargs"]
        rep = optimize_onnx_model(out, opt_out, kw["nhead"], kw["d_model"])
        result["optimize"] = {k: v for k, v in rep.to_dict().items() if k not in ("ops_before", "ops_after")}
    return result


def serving_metadata(ckpt_meta: dict[str, Any]) -> dict[str, Any]:
    """What a model file carries so that it can be served alone.

    ``calibration_temperature`` (float; 1.0 when the checkpoint has no calibration) and ``class_thresholds``
    (one float per label, in label order; [] when none were learned) are what the streaming pipeline reads;
    ``calibration`` is the checkpoint's whole calibration record ({} when it has none).
    """
    kwargs = ckpt_meta.get("model_kwargs", {})
    cal = ckpt_meta.get("calibration") or {}
    return {
        "calibration_temperature": float(cal.get("temperature") or 1.0),
        "class_thresholds": [float(v) for v in cal.get("class_thresholds") or []],
        "calibration": cal,
        "preset": ckpt_meta.get("preset", ""),
        "labels": ckpt_meta.get("labels") or [str(i) for i in range(kwargs.get("num_classes", 0))],
        "num_classes": kwargs.get("num_classes"),
        "feature_version": ckpt_meta.get("feature_version", FEATURE_VERSION),
        "seq_len": SEQ_LEN,
        "model_kwargs": kwargs,
        "data_fingerprint": ckpt_meta.get("data_fingerprint", ""),
    }
