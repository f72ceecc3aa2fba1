"""Training: SignTrainer(model, TrainingConfig(...)).fit(train, val), tracked in MLflow when it can be.

The seed's recipe: AdamW (weight decay 0.05, classifier group at 2x lr), linear warm-up then cosine
decay to 5% of the base lr, label smoothing 0.1, gradient clipping 1.0, early stopping on validation
loss, optional EMA weights for validation, mixed precision (bf16 autocast where the CPU or GPU has bf16
units), and augmentations applied to feature batches (see :mod:`signflow_zoo.data.augment`).
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from signflow_zoo.data.augment import augment_batch
from signflow_zoo.data.batches import batch_loader
from signflow_zoo.model.calibration import fit_calibration
from signflow_zoo.model.checkpoint import save_checkpoint
from signflow_zoo.common.errors import TrainingConfigError, TrainingDivergedError
from signflow_zoo.model.metrics import classification_report
from signflow_zoo.results.tracking import Tracker

# the calibration numbers copied into fit()'s result (and so into the checkpoint's ``result`` and bench records)
CALIBRATION_RESULT_KEYS = ("ece_before", "ece_after", "nll_before", "nll_after", "temperature", "fitted_temperature",
                           "temperature_kept")


@dataclass
class TrainingConfig:
    num_epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3  # the seed's 1e-4 needs far more epochs than the zoo's time budgets
    weight_decay: float = 0.05
    classifier_lr_mult: float = 2.0
    warmup_fraction: float = 0.1  # of all optimizer steps
    min_lr_ratio: float = 0.05
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    early_stopping_patience: int = 15
    use_ema: bool = False
    ema_decay: float = 0.995
    augment: bool = True
    amp: str = "auto"  # "auto" (bf16 where the hardware has it), "bf16", "off"
    device: str = "auto"  # "auto", "cpu", "cuda"
    num_threads: int | None = None
    num_workers: int | None = None  # DataLoader workers; None: 0 for data in memory, a pool for data on disk
    seed: int = 0
    progress: bool = True
    use_mlflow: bool = True
    mlflow_experiment: str = "signflow-training"
    mlflow_run_name: str | None = None
    mlflow_tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> "TrainingConfig":
        """Raise :class:`TrainingConfigError` naming the first setting outside its range; return self.

        Ranges (ends included unless marked open):
        num_epochs 1..10000; batch_size 1..4096; learning_rate (0, 1]; weight_decay 0..1;
        classifier_lr_mult (0, 100]; warmup_fraction 0..1; min_lr_ratio 0..1; label_smoothing [0, 1);
        grad_clip 0..1e6 (0 = off); early_stopping_patience 1..10000; ema_decay (0, 1) open;
        amp auto/bf16/off; device auto/cpu/cuda/cuda:N; num_threads None or 1..1024; num_workers None or 0..64;
        seed 0..2**32-1.
        Every number must be finite.
        """
        def bad(name: str, want: str) -> TrainingConfigError:
            return TrainingConfigError(f"training setting {name}={getattr(self, name)!r} is out of range: "
                                       f"expected {want}")

        lo: float  # integer bounds first, then real ones
        hi: float
        for name, lo, hi in (("num_epochs", 1, 10_000), ("batch_size", 1, 4096), ("early_stopping_patience", 1, 10_000),
                             ("seed", 0, 2**32 - 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise bad(name, f"an integer in [{lo}, {hi}]")
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int)
                                             or not 1 <= self.num_threads <= 1024):
            raise bad("num_threads", "None or an integer in [1, 1024]")
        if self.num_workers is not None and (isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int)
                                             or not 0 <= self.num_workers <= 64):
            raise bad("num_workers", "None or an integer in [0, 64]")
        # (name, low, high, low end open, high end open)
        for name, lo, hi, lo_open, hi_open in (
                ("learning_rate", 0.0, 1.0, True, False), ("weight_decay", 0.0, 1.0, False, False),
                ("classifier_lr_mult", 0.0, 100.0, True, False), ("warmup_fraction", 0.0, 1.0, False, False),
                ("min_lr_ratio", 0.0, 1.0, False, False), ("label_smoothing", 0.0, 1.0, False, True),
                ("grad_clip", 0.0, 1e6, False, False), ("ema_decay", 0.0, 1.0, True, True)):
            v = getattr(self, name)
            ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                  and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi))
            if not ok:
                raise bad(name, f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
        if self.amp not in ("auto", "bf16", "off"):
            raise bad("amp", "'auto', 'bf16' or 'off'")
        if not (self.device in ("auto", "cpu", "cuda") or (isinstance(self.device, str)
                                                           and re.fullmatch(r"cuda:\d+", self.device))):
            raise bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'")
        return self

    def cache_key(self) -> dict[str, Any]:
        """The fields that change the trained weights (not logging or progress)."""
        d = self.to_dict()
        for k in ("progress", "use_mlflow", "mlflow_experiment", "mlflow_run_name", "mlflow_tags", "num_threads", "device",
                  "num_workers"):
            d.pop(k)
        return d


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_bf16() else None


class SignTrainer:
    """Trains a :class:`~signflow_zoo.model.network.SignTransformer` on sign datasets: ``fit(train, val)``,
    ``evaluate(split)``, ``save_model(path)`` (a weights-only checkpoint with its metadata); tracked in MLflow
    when ``config.use_mlflow``."""

    def __init__(self, model, config: TrainingConfig | None = None, class_names: list[str] | None = None,
                 metadata: dict[str, Any] | None = None):
        self.model = model
        self.config = config or TrainingConfig()
        self.class_names = class_names
        self.metadata = dict(metadata or {})
        self.history: list[dict[str, float]] = []
        self.result: dict[str, Any] = {}
        self.calibration: dict[str, Any] | None = None  # fitted by fit() on the validation set
        dev = self.config.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)

    # -- pieces ---------------------------------------------------------------------------------
    def _optimizer(self):
        cfg = self.config
        head, decay, no_decay = [], [], []
        for name, p in self.model.named_parameters():
            if name.startswith(("classifier", "prototypes", "proto_scale")):
                head.append(p)
            elif p.ndim <= 1 or name in ("cls_token", "rel_bias"):
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.learning_rate},
            {"params": no_decay, "weight_decay": 0.0, "lr": cfg.learning_rate},
            {"params": head, "weight_decay": cfg.weight_decay, "lr": cfg.learning_rate * cfg.classifier_lr_mult},
        ]
        for g in groups:
            g["base_lr"] = g["lr"]
        return torch.optim.AdamW(groups)

    def _lr_factor(self, step: int, total: int) -> float:
        warm = max(1, int(self.config.warmup_fraction * total))
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        floor = self.config.min_lr_ratio
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    @torch.no_grad()
    def predict_logits(self, dataset, model=None, batch_size: int = 256) -> np.ndarray:
        model = (model or self.model).eval()
        out = []
        workers = 0 if getattr(dataset, "in_memory", True) else self.config.num_workers
        for x, m, _ in batch_loader(dataset, batch_size, num_workers=workers):
            x, m = x.to(self.device), m.to(self.device)
            out.append(model(x, m).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, model.num_classes), np.float32)

    def evaluate(self, dataset, model=None) -> dict[str, Any]:
        logits = self.predict_logits(dataset, model)
        labels = torch.from_numpy(dataset.labels.astype(np.int64))
        loss = float(F.cross_entropy(torch.from_numpy(logits), labels).item()) if len(dataset) else float("nan")
        rep = classification_report(logits, dataset.labels, self.model.num_classes)
        rep["loss"] = loss
        return rep

    def _check_loss(self, loss: torch.Tensor, x: torch.Tensor, epoch: int, batch: int) -> None:
        """Stop at the first NaN/inf loss, before the optimizer step spreads it into every weight."""
        if bool(torch.isfinite(loss)):
            return
        lr = self.config.learning_rate
        too_high = f"the learning rate {lr:g} is probably too high: train again with a lower one (e.g. {lr / 10:g})"
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            cause = f"the weights became NaN or inf; {too_high}"
        elif not bool(torch.isfinite(x).all()):
            cause = "this batch's input features contain NaN or inf: check the data set and its feature extraction"
        else:
            cause = f"the logits overflowed; {too_high}"
        raise TrainingDivergedError(
            f"training diverged at epoch {epoch + 1}, step {batch + 1}: the loss is {loss.item()}; {cause}. "
            "Nothing was saved.", epoch=epoch + 1, step=batch + 1)

    def _calibrate(self, val, tracker=None, run_id=None) -> None:
        """Fit temperature and per-class thresholds on one part of the validation logits and measure ECE and NLL
        on the other, split by signer when the validation set has two or more (see :mod:`.calibration`)."""
        logits = self.predict_logits(val)
        if not np.isfinite(logits).all():
            raise TrainingDivergedError("training diverged: the final weights give NaN or inf logits on the "
                                        "validation set; train again with a lower learning rate. Nothing was saved.")
        self.calibration = fit_calibration(logits, val.labels, getattr(val, "signers", None))
        cal = self.calibration or {}
        self.result.update({k: cal.get(k) for k in CALIBRATION_RESULT_KEYS})
        if tracker is not None and cal:
            metrics = {k: float(cal[k]) for k in CALIBRATION_RESULT_KEYS if cal.get(k) is not None}
            metrics.update({f"calibration_{k}": float(cal[k]) for k in ("fit_size", "eval_size")})
            tracker.log_batch(run_id, metrics=metrics, step=max(len(self.history) - 1, 0))

    # -- fit ------------------------------------------------------------------------------------
    def fit(self, train, val) -> dict[str, Any]:
        cfg = self.config.validate()
        if len(train) == 0:
            raise ValueError("training set is empty")
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.model.to(self.device)
        amp_dtype = resolve_amp(cfg.amp, self.device)
        opt = self._optimizer()
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        total = steps_per_epoch * cfg.num_epochs
        ema = copy.deepcopy(self.model).eval() if cfg.use_ema else None
        tracker = Tracker(cfg.mlflow_experiment, enabled=cfg.use_mlflow)
        tags = {"signflow_zoo.kind": "training", **cfg.mlflow_tags}
        run_id = tracker.create_run(cfg.mlflow_run_name or f"train-{self.metadata.get('preset', 'model')}", tags)
        params = {**{f"train.{k}": v for k, v in cfg.cache_key().items()}, **{k: v for k, v in self.metadata.items()
                  if not isinstance(v, (dict, list))}, "amp_dtype": str(amp_dtype), "device": str(self.device),
                  "num_params": sum(p.numel() for p in self.model.parameters()), "train_size": len(train),
                  "val_size": len(val)}
        tracker.log_batch(run_id, params=params)
        best_loss, best_state, bad_epochs, step = float("inf"), None, 0, 0
        t_start = time.perf_counter()
        status = "FAILED"
        try:
            from tqdm.auto import tqdm

            loader = batch_loader(train, cfg.batch_size, rng, cfg.num_workers, pin_memory=self.device.type == "cuda")
            for epoch in range(cfg.num_epochs):
                self.model.train()
                # iter() once: tqdm would call it twice, and each call draws a shuffle from rng
                bar = tqdm(iter(loader), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.num_epochs}",
                           leave=False, disable=None if cfg.progress else True, file=sys.stderr, unit="batch")
                run_loss, seen = 0.0, 0
                for b, (x, m, y) in enumerate(bar):  # the loader draws this epoch's shuffle from rng, as slicing did
                    if cfg.augment:
                        x, m = augment_batch(x, m, rng)
                    x, m, y = x.to(self.device), m.to(self.device), y.to(self.device)
                    f = self._lr_factor(step, total)
                    for g in opt.param_groups:
                        g["lr"] = g["base_lr"] * f
                    with torch.autocast(self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        logits = self.model(x, m)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                    self._check_loss(loss, x, epoch, b)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    opt.step()
                    step += 1
                    if ema is not None:
                        with torch.no_grad():
                            for pe, pm in zip(ema.parameters(), self.model.parameters()):
                                pe.mul_(cfg.ema_decay).add_(pm.detach(), alpha=1 - cfg.ema_decay)
                    run_loss += float(loss.item()) * len(y)
                    seen += len(y)
                    bar.set_postfix(loss=f"{run_loss / seen:.3f}")
                bar.close()
                rep = self.evaluate(val, ema)
                row = {"train_loss": run_loss / max(seen, 1), "val_loss": rep["loss"], "val_accuracy": rep["top1"],
                       "lr": opt.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - t_start}
                self.history.append(row)
                tracker.log_batch(run_id, metrics=row, step=epoch)
                if cfg.progress:
                    print(f"  epoch {epoch + 1}/{cfg.num_epochs}: train_loss {row['train_loss']:.3f}  "
                          f"val_loss {row['val_loss']:.3f}  val_acc {row['val_accuracy']:.3f}", file=sys.stderr)
                if rep["loss"] < best_loss - 1e-4:
                    best_loss, bad_epochs = rep["loss"], 0
                    best_state = copy.deepcopy((ema or self.model).state_dict())
                else:
                    bad_epochs += 1
                    if bad_epochs >= cfg.early_stopping_patience:
                        break
            if best_state is not None:
                self.model.load_state_dict(best_state)
            train_seconds = time.perf_counter() - t_start
            final = self.evaluate(val)
            self.result = {"train_seconds": train_seconds, "epochs_run": len(self.history), "val_loss": final["loss"],
                           "val_accuracy": final["top1"], "val_top5": final["top5"], "val_macro_f1": final["macro_f1"],
                           "val_weighted_f1": final["weighted_f1"], "best_val_loss": best_loss,
                           "amp": str(amp_dtype), "run_id": run_id}
            self._calibrate(val, tracker, run_id)
            final_keys = ("train_seconds", "epochs_run", "val_top5", "val_macro_f1", "val_weighted_f1", "best_val_loss")
            tracker.log_batch(run_id, metrics={k: self.result[k] for k in final_keys}, step=len(self.history) - 1)
            if tracker.active and run_id:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "confusion_matrix.json"
                    path.write_text(json.dumps({"labels": self.class_names, "matrix": final["confusion"].tolist()}))
                    tracker.log_artifact(run_id, str(path))
                    try:
                        from signflow_zoo.model.confusion import plot_confusion

                        png = plot_confusion(final["confusion"], self.class_names, Path(tmp) / "confusion_matrix.png")
                        tracker.log_artifact(run_id, str(png))
                    except ImportError:
                        pass
            status = "FINISHED"
        finally:
            tracker.end_run(run_id, status)
        self.model.eval()
        return self.result

    def save_model(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        meta = {**self.metadata, **(extra or {}), "labels": self.class_names, "training": self.config.cache_key(),
                "result": {k: v for k, v in self.result.items()}}
        if self.calibration is not None:
            meta["calibration"] = self.calibration
        from signflow_zoo.data.features import FEATURE_VERSION

        meta.setdefault("feature_version", FEATURE_VERSION)
        return save_checkpoint(path, self.model, meta)
