"""Import a model trained by the original SignFlow: its checkpoint -> a signflow-zoo checkpoint.

**What the original saves** (phase 1, 469 features: ``SignTrainer.save_model``): a dict holding
``model_state_dict`` and, beside it, the architecture (``num_classes``, ``num_features``, ``d_model``,
``nhead``, ``num_layers``, ``dim_feedforward``, the dropouts, ``use_cls_token``, ``temporal_smoothing``,
``use_multiscale_stem``, ``use_cosine_head``, ``relative_bias_max_distance``, ``cosine_head_weight``), its
``class_labels``, the training ``config`` and a ``metadata`` dict (``class_thresholds`` as {label: threshold},
``calibration`` {``temperature``}, ``calibration_temperature``). A bare state dict
(``torch.save(model.state_dict())``) is accepted too. Everything is read with ``torch.load(...,
weights_only=True)``: no code from the file runs.

**What is inferred, and from where.** The sizes come from the weights' shapes: ``d_model`` (``cls_token``),
``num_layers`` (the ``encoder.layers.N`` blocks), ``dim_feedforward`` (``linear1``), ``num_classes``
(``classifier``), the relative-distance range (``relative_attention_bias``). The number of attention heads is
in no shape (``in_proj_weight`` is [3 d_model, d_model] whatever the heads), so it comes from the checkpoint's
``nhead``; a bare state dict needs ``heads=`` (``--heads``), and a given value that contradicts the checkpoint
is an error. Sizes the checkpoint states are checked against the shapes.

**The conversion.** Parameters are renamed to :class:`~signflow_zoo.model.network.SignTransformer`'s, and the
relative-bias table is reversed: the original indexes it with (query - key), signflow-zoo with (key - query).
The original's stored positional table (``positional_encoding.pe``) is dropped (signflow-zoo computes the same
sinusoids). Only the configuration SignTransformer reproduces is accepted: CLS token, multiscale stem,
cosine head of weight 0.35, temporal smoothing 0.1 (the original's defaults); anything else is refused with
the value that differs.

**Checked by logits.** Before anything is written, the checkpoint is also run through a re-implementation of
the original's forward (its module names, :class:`torch.nn.TransformerEncoder` and its own bias
orientation), and the converted model must give the same logits on random inputs (every frame valid: on
padded frames the two differ on purpose, see :mod:`~signflow_zoo.model.network`).
"""

from __future__ import annotations

import hashlib
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from signflow_zoo.common.errors import CheckpointError
from signflow_zoo.data.features import FEATURE_DIM, FEATURE_VERSION
from signflow_zoo.model.labels import LabelsError, check_labels, read_labels
from signflow_zoo.model.network import SignTransformer, model_kwargs_problem

# The only configuration of the original that SignTransformer reproduces (the original's constructor defaults).
SUPPORTED_FLAGS: dict[str, Any] = {"use_cls_token": True, "use_multiscale_stem": True, "use_cosine_head": True,
                                   "temporal_smoothing": 0.1, "cosine_head_weight": 0.35}
# How the original's loader (``load_model_checkpoint``) fills a flag missing from a checkpoint dict.
_LOADER_DEFAULTS: dict[str, Any] = {"use_cls_token": True, "use_multiscale_stem": False, "use_cosine_head": False,
                                    "temporal_smoothing": 0.0, "cosine_head_weight": 0.35}
# Sizes a checkpoint dict states beside its weights -> the size inferred from the shapes.
_STATED_SIZES = {"d_model": "d_model", "num_layers": "num_layers", "dim_feedforward": "dim_feedforward",
                 "num_classes": "num_classes", "num_features": "input_dim",
                 "relative_bias_max_distance": "max_rel_distance"}
_DROPOUTS = {"dropout": "dropout", "feature_dropout": "feature_dropout", "pooling_dropout": "pooling_dropout",
             "token_dropout": "token_dropout"}
MIN_POSITIONS = 65  # the positional table must cover 64 frames and the CLS token
CHECK_TOLERANCE = 1e-4  # converted vs original logits, scaled by max(1, |logits|)

# original parameter name -> SignTransformer's ("\\1" the block or branch index)
_RENAMES = [
    (r"embedding\.0\.(weight|bias)", r"embed.\1"),
    (r"temporal_stem\.(\d+)\.0\.(weight|bias)", r"stem.\1.\2"),
    (r"stem_fusion\.0\.(weight|bias)", r"fuse.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)", r"layers.\1.qkv.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"layers.\1.proj.\2"),
    (r"encoder\.layers\.(\d+)\.linear1\.(weight|bias)", r"layers.\1.ff1.\2"),
    (r"encoder\.layers\.(\d+)\.linear2\.(weight|bias)", r"layers.\1.ff2.\2"),
    (r"encoder\.layers\.(\d+)\.(norm[12])\.(weight|bias)", r"layers.\1.\2.\3"),
    (r"output_norm\.(weight|bias)", r"out_norm.\1"),
    (r"pooling_gate\.([02])\.(weight|bias)", r"gate.\1.\2"),
    (r"metric_projection\.(weight|bias)", r"metric_proj.\1"),
    (r"class_prototypes", "prototypes"),
    (r"cosine_logit_scale", "proto_scale"),
    (r"relative_attention_bias", "rel_bias"),
    (r"(input_norm|classifier)\.(weight|bias)", r"\1.\2"),
    (r"cls_token", "cls_token"),
]
_DROPPED = {"positional_encoding.pe"}  # SignTransformer computes the sinusoids itself


class _Positions(nn.Module):
    """Where the original keeps its sinusoid table: ``positional_encoding.pe`` [1, max_len, d_model]."""

    pe: torch.Tensor

    def __init__(self, length: int, d_model: int):
        super().__init__()
        self.register_buffer("pe", torch.zeros(1, length, d_model))


class _OriginalLayout(nn.Module):
    """The original SignTransformer's modules (names and shapes) and forward, in the configuration
    signflow-zoo reproduces, for inputs whose frames are all valid. The reference the conversion is checked
    against; written from the original's structure, not a copy of its code."""

    def __init__(self, input_dim: int, num_classes: int, d_model: int, nhead: int, num_layers: int,
                 dim_feedforward: int, max_rel_distance: int, pe_len: int):
        super().__init__()
        self.max_rel_distance = max_rel_distance
        self.input_norm = nn.LayerNorm(input_dim)
        self.embedding = nn.Sequential(nn.Linear(input_dim, d_model), nn.GELU(), nn.Dropout(0.0))
        base = d_model // 3
        self.temporal_stem = nn.ModuleList(
            nn.Sequential(nn.Conv1d(input_dim, c, k, padding=k // 2), nn.GELU())
            for c, k in ((base, 3), (base, 5), (d_model - 2 * base, 7)))
        self.stem_fusion = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.GELU(), nn.Dropout(0.0))
        self.positional_encoding = _Positions(pe_len, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.relative_attention_bias = nn.Parameter(torch.zeros(2 * max_rel_distance + 1))
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, 0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(d_model)
        self.pooling_gate = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.GELU(), nn.Linear(d_model, 1),
                                          nn.Sigmoid())
        self.classifier = nn.Linear(d_model, num_classes)
        self.metric_projection = nn.Linear(d_model, d_model)
        self.class_prototypes = nn.Parameter(torch.zeros(num_classes, d_model))
        self.cosine_logit_scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embedding(self.input_norm(x))
        stem = torch.cat([branch(x.transpose(1, 2)) for branch in self.temporal_stem], dim=1).transpose(1, 2)
        h = self.stem_fusion(torch.cat([h, stem], dim=-1))
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), h], dim=1)
        h = h + self.positional_encoding.pe[:, : h.shape[1]]
        frames = h[:, 1:]
        smooth = F.avg_pool1d(frames.transpose(1, 2), kernel_size=3, stride=1, padding=1).transpose(1, 2)
        h = torch.cat([h[:, :1], 0.9 * frames + 0.1 * smooth], dim=1)
        n, m = h.shape[1], self.max_rel_distance
        pos = torch.arange(n)
        bias = self.relative_attention_bias[(pos[:, None] - pos[None, :]).clamp(-m, m) + m].clone()  # query - key
        bias[0, :] = 0.0  # the CLS token has no temporal position
        bias[:, 0] = 0.0
        h = self.output_norm(self.encoder(h, mask=bias))
        cls, mean = h[:, 0], h[:, 1:].mean(dim=1)
        g = self.pooling_gate(torch.cat([cls, mean], dim=-1))
        z = g * cls + (1.0 - g) * mean
        cos = F.normalize(self.metric_projection(z), dim=-1) @ F.normalize(self.class_prototypes, dim=-1).t()
        return 0.65 * self.classifier(z) + 0.35 * self.cosine_logit_scale.clamp(1.0, 50.0) * cos


# -- reading ----------------------------------------------------------------------------------------
def _load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (corrupt or truncated, or saved by a very old "
                              "PyTorch); the original SignFlow saves with torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for bad files
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load it as a weights-only checkpoint: {first}") from None


def _split(path: Path, blob: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, the checkpoint dict around it, or None for a bare state dict)."""
    if not isinstance(blob, dict):
        raise CheckpointError(f"{path}: holds a {type(blob).__name__}, not an original SignFlow checkpoint (a dict "
                              "with model_state_dict, or a state dict)")
    if "state_dict" in blob and "metadata" in blob and "model_state_dict" not in blob:
        raise CheckpointError(f"{path}: already a signflow-zoo checkpoint; serve it as it is")
    holder: dict[str, Any] | None = blob if "model_state_dict" in blob else None
    state = blob["model_state_dict"] if holder is not None else blob
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: model_state_dict is not a mapping of parameter names to tensors")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        what = "holds no tensors" if holder is None and len(bad) == len(state) else f"has non-tensor entries ({_few(bad)})"
        raise CheckpointError(f"{path}: not an original SignFlow state dict: it {what}; expected a dict with "
                              "model_state_dict (what the original's SignTrainer.save_model writes) or a state dict")
    return state, holder


def _few(names: Sequence[str], n: int = 4) -> str:
    names = sorted(names)
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def looks_like_original(path: str | Path) -> bool:
    """Whether ``path`` holds an original SignFlow checkpoint (a dict with ``model_state_dict``), weights-only."""
    try:
        blob = _load(Path(path))
    except CheckpointError:
        return False
    return isinstance(blob, dict) and isinstance(blob.get("model_state_dict"), dict)


# -- sizes and configuration ------------------------------------------------------------------------
def _sizes(path: Path, state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """SignTransformer sizes from the weights' shapes (all but the heads)."""
    needed = ["cls_token", "input_norm.weight", "classifier.weight", "relative_attention_bias",
              "encoder.layers.0.linear1.weight", "positional_encoding.pe"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not the original SignFlow layout: missing keys {_few(missing)} (found "
                              f"{_few(list(state))})")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    shapes = {k: tuple(state[k].shape) for k in needed}
    ok = (len(shapes["cls_token"]) == 3 and len(shapes["input_norm.weight"]) == 1
          and len(shapes["classifier.weight"]) == 2 and len(shapes["relative_attention_bias"]) == 1
          and shapes["relative_attention_bias"][0] % 2 == 1 and len(shapes["encoder.layers.0.linear1.weight"]) == 2
          and len(shapes["positional_encoding.pe"]) == 3)
    if not ok:
        raise CheckpointError(f"{path}: not the original SignFlow layout: unexpected shapes "
                              + ", ".join(f"{k} {list(s)}" for k, s in shapes.items()))
    sizes = {"input_dim": shapes["input_norm.weight"][0], "num_classes": shapes["classifier.weight"][0],
            "d_model": shapes["cls_token"][2], "num_layers": max(layers) + 1,
            "dim_feedforward": shapes["encoder.layers.0.linear1.weight"][0],
            "max_rel_distance": (shapes["relative_attention_bias"][0] - 1) // 2,
            "pe_len": shapes["positional_encoding.pe"][1]}
    if sizes["input_dim"] != FEATURE_DIM:
        raise CheckpointError(f"{path}: the model reads {sizes['input_dim']} features per frame; signflow-zoo computes "
                              f"{FEATURE_DIM} ({FEATURE_VERSION}), the original's phase-1 features")
    if sizes["pe_len"] < MIN_POSITIONS:
        raise CheckpointError(f"{path}: its positional_encoding.pe covers {sizes['pe_len']} positions; serving needs "
                              f"{MIN_POSITIONS} (64 frames and the CLS token; the original builds 5000)")
    return sizes


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _heads(path: Path, holder: dict[str, Any] | None, heads: int | None, d_model: int) -> tuple[int, str]:
    stated = None if holder is None else holder.get("nhead")
    if stated is not None and not _is_int(stated):
        raise CheckpointError(f"{path}: its nhead is {stated!r}, not an integer")
    if heads is not None and (not _is_int(heads) or heads < 1):
        raise CheckpointError(f"heads must be an integer >= 1, got {heads!r}")
    if stated is not None and heads is not None and stated != heads:
        raise CheckpointError(f"{path}: the checkpoint was trained with nhead={stated}, but {heads} heads were given; "
                              "leave out --heads (heads=) to use the checkpoint's")
    if stated is None and heads is None:
        raise CheckpointError(f"{path}: a bare state dict: the number of attention heads is in none of the weights' "
                              f"shapes; give it with --heads N (heads=N), as the model was built (the original's "
                              f"default is 6 for d_model 192; it must divide d_model={d_model})")
    n = stated if stated is not None else heads
    assert n is not None
    if n < 1 or d_model % n:
        raise CheckpointError(f"{path}: {n} attention heads do not divide d_model={d_model}")
    return n, "the checkpoint (nhead)" if stated is not None else "heads= (--heads)"


def _check_configuration(path: Path, holder: dict[str, Any] | None, sizes: dict[str, int]) -> None:
    if holder is None:
        return  # a bare state dict: built with the original's defaults, which are what SignTransformer reproduces
    for key, want in SUPPORTED_FLAGS.items():
        value = holder.get(key, _LOADER_DEFAULTS[key])
        same = value == want if isinstance(want, bool) else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isclose(value, want, abs_tol=1e-9))
        if not same:
            shown = f"{value!r}" + ("" if key in holder else " (absent, which the original's loader reads as that)")
            raise CheckpointError(f"{path}: the original model was built with {key}={shown}; signflow-zoo's "
                                  f"SignTransformer reproduces only {key}={want!r} (the original's default), so it "
                                  "cannot be imported")
    for key, ours in _STATED_SIZES.items():
        value = holder.get(key)
        if value is not None and value != sizes[ours]:
            raise CheckpointError(f"{path}: the checkpoint says {key}={value!r}, but its weights have {sizes[ours]}; "
                                  "a corrupt or hand-edited checkpoint")


def _model_kwargs(holder: dict[str, Any] | None, sizes: dict[str, int], heads: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {k: v for k, v in sizes.items() if k != "pe_len"}
    kwargs["nhead"] = heads
    for key, ours in _DROPOUTS.items():  # training only: kept so that fine-tuning starts where the original was
        v = None if holder is None else holder.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0:
            kwargs[ours] = float(v)
    return kwargs


# -- labels and calibration -------------------------------------------------------------------------
def _labels(path: Path, holder: dict[str, Any] | None, labels: Any, num_classes: int,
            notes: list[str]) -> tuple[list[str], str]:
    saved = None if holder is None else holder.get("class_labels")
    if saved is not None and saved != []:
        try:
            saved = check_labels(saved, "class_labels")
        except LabelsError as exc:
            raise CheckpointError(f"{path}: class_labels: {exc}") from None
    if labels is None:
        if not saved:
            raise CheckpointError(f"{path}: the checkpoint has no class_labels; give the labels in output order with "
                                  "--labels FILE (labels=[...]): a JSON list, or one label per line")
        given, source = saved, "the checkpoint (class_labels)"
    else:
        given = read_labels(labels)
        source = f"--labels {labels}" if isinstance(labels, (str, Path)) else "labels="
        if saved and len(saved) != len(given):
            raise LabelsError(f"{source}: {len(given)} labels, but the checkpoint lists {len(saved)} class_labels")
        if saved and saved != given:
            i = next(i for i, (a, b) in enumerate(zip(saved, given)) if a != b)
            notes.append(f"the labels given replace the checkpoint's class_labels (first difference: output {i} is "
                         f"{given[i]!r}, the checkpoint said {saved[i]!r})")
    if len(given) != num_classes:
        raise LabelsError(f"{source}: {len(given)} labels for a model with {num_classes} outputs (classifier.weight); "
                          "give one label per output, in output order")
    return given, source


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _calibration(holder: dict[str, Any] | None, labels: list[str], notes: list[str]) -> dict[str, Any] | None:
    """The original's saved calibration as signflow-zoo's: a temperature, and thresholds in label order (0.0 for
    a label without one: never above the adaptive threshold), clipped to 0..1 as the original's pipeline does."""
    md = holder.get("metadata") if holder is not None else None
    if not isinstance(md, dict):
        return None
    saved = md.get("calibration")
    cal: dict[str, Any] = saved if isinstance(saved, dict) else {}
    t = cal.get("temperature", md.get("calibration_temperature"))
    th = md.get("class_thresholds")
    if t is None and not th:
        return None
    out: dict[str, Any] = {"temperature": 1.0, "class_thresholds": None, "source": "original checkpoint metadata"}
    if t is not None:
        if _finite_number(t) and t > 0:
            out["temperature"] = float(t)
        else:
            notes.append(f"the checkpoint's calibration temperature {t!r} is not a number > 0; left out (1.0)")
    if isinstance(th, dict) and th:
        unknown = [str(k) for k in th if k not in labels]
        if unknown:
            notes.append(f"class_thresholds for labels the model does not have were left out: {_few(unknown)}")
        values = [th.get(label) for label in labels]
        if not all(v is None or _finite_number(v) for v in values):
            notes.append("class_thresholds holds values that are not numbers; left out")
        else:
            out["class_thresholds"] = [0.0 if v is None else float(min(1.0, max(0.0, v))) for v in values]
    elif th:
        notes.append(f"class_thresholds is a {type(th).__name__}, not {{label: threshold}}; left out")
    return out


# -- conversion --------------------------------------------------------------------------------------
def _renamed(key: str) -> str | None:
    for pattern, repl in _RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original's parameters under SignTransformer's names, the relative-bias table reversed (the original
    indexes it by query - key, SignTransformer by key - query); the positional table is dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _DROPPED:
            continue
        name = _renamed(key)
        if name is None:
            raise KeyError(key)
        out[name] = value.flip(0) if name == "rel_bias" else value
    return out


def _check_layout(path: Path, state: Mapping[str, torch.Tensor], reference: nn.Module) -> None:
    want = reference.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    if missing or unexpected:
        parts = ([f"missing keys {_few(missing)}"] if missing else []) + (
            [f"unexpected keys {_few(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{path}: not the original SignFlow layout: {'; '.join(parts)}")
    wrong = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})" for k, v in want.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{path}: not the original SignFlow layout: wrong shapes {_few(wrong, 3)}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or inf (first: {sorted(bad)[0]})")
    if any(not v.is_floating_point() for v in state.values()):
        raise CheckpointError(f"{path}: not the original SignFlow layout: integer tensors "
                              f"{_few([k for k, v in state.items() if not v.is_floating_point()])}")


def _reference_logits(reference: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The original forward as trained. With gradients off, ``nn.TransformerEncoderLayer`` takes PyTorch's inference
    fast path, which misreads an additive float mask such as the relative bias (pytorch/pytorch#118628: wrong
    logits or NaN); with gradients on (parameters that require them) it computes what training computed."""
    with torch.inference_mode(False), torch.enable_grad():
        return reference(x).detach()


def logits_difference(reference: nn.Module, model: SignTransformer, seed: int = 0) -> float:
    """The largest |original - converted| logit over random inputs (2 x 48 and 1 x 64 frames, all valid),
    scaled by max(1, |original logits|)."""
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b, t in ((2, 48), (1, 64)):
        x = torch.randn(b, t, model.input_dim, generator=gen)
        want = _reference_logits(reference, x)
        with torch.inference_mode():
            got = model(x, torch.ones(b, t, dtype=torch.bool))
        worst = max(worst, float((want - got).abs().max()) / max(1.0, float(want.abs().max())))
    return worst


def import_original(checkpoint: str | Path, labels: Sequence[str] | str | Path | None, output: str | Path, *,
                    heads: int | None = None) -> dict[str, Any]:
    """Convert a checkpoint of the original SignFlow into a signflow-zoo checkpoint that serves and benches.

    ``checkpoint``: what the original's ``SignTrainer.save_model`` writes (a dict with ``model_state_dict``
    and the architecture), or a bare state dict. ``labels``: the class labels in output order -- a list, or a
    labels file (a JSON list, or one label per line); None takes the checkpoint's ``class_labels``; given
    labels must be as many as the model's outputs (and as the checkpoint's own, which they replace).
    ``output``: the ``.pt`` file to write. ``heads``: the attention heads, needed only for a bare state dict
    (no shape holds them). The sizes come from the weights' shapes; the relative-bias table is reversed; the
    original's calibration (temperature, per-label thresholds) is carried over. Nothing is written unless the
    converted model's logits match the original forward's (re-implemented here) on random inputs.

    Returns a summary: ``output``, ``classes``, ``labels_from``, ``model_kwargs``, ``heads_from``,
    ``calibration``, ``max_logit_difference`` and ``notes``. What ``signflow-zoo import-original`` runs.
    """
    from signflow_zoo.common.output_paths import check_output_file
    from signflow_zoo.model.checkpoint import save_checkpoint

    path = Path(checkpoint)
    reads: list[tuple[str, str | Path | None]] = [("the checkpoint being imported", path)]
    if isinstance(labels, (str, Path)):
        reads.append(("the labels file", labels))
    out = check_output_file(output, "--output", reads)
    if out.suffix.lower() not in (".pt", ".pth"):
        raise CheckpointError(f"--output {output}: a signflow-zoo checkpoint is a .pt file; name it e.g. "
                              f"{Path(output).with_suffix('.pt').name}")
    state, holder = _split(path, _load(path))
    sizes = _sizes(path, state)
    _check_configuration(path, holder, sizes)
    n_heads, heads_from = _heads(path, holder, heads, sizes["d_model"])
    kwargs = _model_kwargs(holder, sizes, n_heads)
    problem = model_kwargs_problem(kwargs)
    if problem:
        raise CheckpointError(f"{path}: an impossible model: {problem.removeprefix('model_kwargs ')}")
    notes: list[str] = []
    label_list, labels_from = _labels(path, holder, labels, sizes["num_classes"], notes)

    reference = _OriginalLayout(sizes["input_dim"], sizes["num_classes"], sizes["d_model"], n_heads,
                                sizes["num_layers"], sizes["dim_feedforward"], sizes["max_rel_distance"],
                                sizes["pe_len"])
    _check_layout(path, state, reference)
    reference.load_state_dict(state, strict=True)
    model = SignTransformer(**kwargs)
    model.load_state_dict(convert_state_dict(state), strict=True)
    reference.eval()
    model.eval()
    diff = logits_difference(reference, model)
    if not diff <= CHECK_TOLERANCE:
        pe_hint = ("; its positional_encoding.pe is not the sinusoid table the original builds"
                   if not torch.allclose(reference.positional_encoding.pe[0, :MIN_POSITIONS],
                                         model._positional(MIN_POSITIONS)[0], atol=1e-5)
                   else "")
        raise CheckpointError(f"{path}: the converted model's logits differ from the original's by {diff:.2e} "
                              f"(> {CHECK_TOLERANCE:g}){pe_hint}; nothing was written")

    calibration = _calibration(holder, label_list, notes)
    meta: dict[str, Any] = {"preset": "", "labels": label_list, "feature_version": FEATURE_VERSION,
                            "imported_from": {"format": "original SignFlow checkpoint", "file": path.name,
                                              "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                              "heads_from": heads_from}}
    if calibration is not None:
        meta["calibration"] = calibration
    save_checkpoint(out, model, meta)
    return {"output": str(out), "classes": len(label_list), "labels_from": labels_from,
            "model_kwargs": dict(model.init_kwargs), "heads_from": heads_from, "calibration": calibration,
            "max_logit_difference": diff, "notes": notes}


__all__ = ["import_original", "convert_state_dict", "looks_like_original", "logits_difference", "SUPPORTED_FLAGS"]
