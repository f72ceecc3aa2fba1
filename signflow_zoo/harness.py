"""The benchmark harness: train or load, export, check parity, measure latency and accuracy, track.

``run_bench(BenchConfig(...))`` is what ``signflow-zoo bench`` calls. Results are written to a local
JSON file after every preset and before any tracking call, so a failing tracking server loses nothing
(``signflow-zoo sync`` uploads them later).
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .artifacts import build_artifacts, checkpoint_path, zoo_home
from .environment import environment
from .errors import BackendError, CheckpointError, SignFlowError
from .model import count_parameters, estimate_gflops
from .parity import compare
from .plugins import get_registry
from .results import EXPERIMENT, SCHEMA, flat_records, now_iso, upload, write_json_atomic
from .runners import BackendUnavailable, RunnerOptions
from .timing import TimingConfig, measure_interleaved
from .tracking import Tracker
from .zoo import Zoo, ZooEntry

PARITY_SAMPLES = 64


@dataclass
class BenchConfig:
    presets: str = "lightweight"  # "all", a name, or "a,b"
    backends: str = "all"
    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int | None = None  # None = all cores of this machine, for every backend alike
    timing: TimingConfig = field(default_factory=TimingConfig)
    data: str = "synthetic"
    seed: int = 0
    no_train: bool = False
    retrain: bool = False
    epochs: int | None = None  # override the zoo entry's default epochs
    exporter: str = "dynamo"
    json_path: str | None = None
    experiment: str = EXPERIMENT
    track: bool = True
    stream: bool = True
    accuracy: bool = True
    plots: bool = True
    zoo_file: str | None = None
    progress: bool = True

    @classmethod
    def quick(cls, **kw) -> "BenchConfig":
        """Short timing for a smoke run; numbers are flagged by their low iteration counts."""
        cfg = cls(**kw)
        cfg.batch_sizes = kw.get("batch_sizes", (1, 8))
        cfg.timing = TimingConfig(warmup=3, min_iters=10, min_time=0.2, round_iters=5)
        return cfg

    def validate(self) -> "BenchConfig":
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise SignFlowError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.threads is not None and self.threads < 1:
            raise SignFlowError(f"--threads must be >= 1, got {self.threads}")
        if self.epochs is not None and self.epochs < 1:
            raise SignFlowError(f"--epochs must be >= 1, got {self.epochs}")
        self.timing.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch_sizes"] = list(self.batch_sizes)
        return d


SPLIT_PARTS = ("train", "val", "test")


def load_splits_cached(spec: str, seed: int, home: Path):
    """Synthetic data sets are derived purely from their spec: cache their features as .npz (no pickle).

    File-based data sets are always read afresh (the files may change).
    """
    from .artifacts import stable_hash
    from .data import DataSplits, SignDataset, load_data, parse_synthetic_spec
    from .features import FEATURE_VERSION
    from .synthetic import GENERATOR_VERSION

    if not spec.strip().startswith("synthetic"):
        return load_data(spec, seed=seed)
    syn = parse_synthetic_spec(spec, seed)  # validates the spec before anything is cached
    key = stable_hash({"spec": syn.to_dict(), "seed": seed, "generator": GENERATOR_VERSION, "features": FEATURE_VERSION})
    path = home / "data" / f"synthetic-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                names = [str(x) for x in z["class_names"]]
                parts = {p: SignDataset(z[f"{p}_features"], z[f"{p}_mask"], z[f"{p}_labels"], names,
                                        [str(x) for x in z[f"{p}_signers"]]) for p in SPLIT_PARTS}
                return DataSplits(**parts, class_names=names, spec=str(z["spec"]), fingerprint=str(z["fingerprint"]))
        except (OSError, KeyError, ValueError):
            pass  # a derived cache file: rebuild it below
    splits = load_data(spec, seed=seed)
    arrays = {"class_names": np.array(splits.class_names), "spec": np.array(splits.spec),
              "fingerprint": np.array(splits.fingerprint)}
    for p in SPLIT_PARTS:
        ds = getattr(splits, p)
        arrays.update({f"{p}_features": ds.features, f"{p}_mask": ds.mask, f"{p}_labels": ds.labels,
                       f"{p}_signers": np.array(ds.signers)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return splits


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class Bench:
    def __init__(self, config: BenchConfig, log: Callable[[str], None] | None = None):
        self.cfg = config.validate()
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.zoo = Zoo.load(config.zoo_file)
        self.entries = self.zoo.select(config.presets)
        self.registry = get_registry()
        self.selected = self.registry.select(config.backends)
        self.threads = config.threads or os.cpu_count() or 1
        self.home = zoo_home()
        self.invocation_id = uuid.uuid4().hex[:12]
        self.created = now_iso()
        stamp = self.created.replace(":", "").replace("-", "")
        self.json_path = self.home / "results" / f"bench-{stamp}-{self.invocation_id}.json"
        self.doc: dict[str, Any] = {
            "schema": SCHEMA, "invocation_id": self.invocation_id, "created": self.created,
            "environment": environment(), "config": {**config.to_dict(), "threads": self.threads},
            "records": [], "tracking": {"uploaded": False, "experiment": config.experiment},
            "result_file": str(self.json_path),
        }
        self.samples: dict[str, list[float]] = {}
        self._splits = None

    # -- data and checkpoints -------------------------------------------------------------------
    def splits(self):
        if self._splits is None:
            self.log(f"data: {self.cfg.data} (seed {self.cfg.seed})")
            self._splits = load_splits_cached(self.cfg.data, self.cfg.seed, self.home)
        return self._splits

    def training_config(self, entry: ZooEntry):
        from .training import TrainingConfig

        return TrainingConfig(num_epochs=self.cfg.epochs or entry.epochs, seed=self.cfg.seed,
                              progress=self.cfg.progress, use_mlflow=self.cfg.track,
                              mlflow_run_name=f"train-{entry.name}",
                              mlflow_tags={"preset": entry.name, "signflow_zoo.invocation_id": self.invocation_id})

    def checkpoint(self, entry: ZooEntry) -> tuple[Path, dict[str, Any]]:
        from .checkpoint import read_checkpoint

        splits = self.splits()
        tcfg = self.training_config(entry)
        path = checkpoint_path(entry, len(splits.class_names), splits.fingerprint, tcfg.cache_key(), self.home)
        if path.exists() and not self.cfg.retrain:
            _, meta = read_checkpoint(path)  # a corrupt cache file is an error naming it, never a silent retrain
            self.log(f"{entry.name}: cached checkpoint {path}")
            return path, meta
        if self.cfg.no_train:
            raise CheckpointError(
                f"no cached checkpoint for preset {entry.name!r} with this data and training config ({path}); "
                "run without --no-train to train it, or `signflow-zoo train --preset " + entry.name + "`"
            )
        return self.train(entry, path, tcfg)

    def train(self, entry: ZooEntry, path: Path, tcfg) -> tuple[Path, dict[str, Any]]:
        from .checkpoint import read_checkpoint
        from .model import build_model
        from .training import SignTrainer

        splits = self.splits()
        model = build_model(entry, num_classes=len(splits.class_names))
        self.log(f"{entry.name}: training {count_parameters(model) / 1e6:.2f}M params for {tcfg.num_epochs} epochs "
                 f"on {len(splits.train)} clips ({splits.spec}) ...")
        trainer = SignTrainer(model, tcfg, class_names=list(splits.class_names),
                              metadata={"preset": entry.name, "data_spec": splits.spec,
                                        "data_fingerprint": splits.fingerprint})
        res = trainer.fit(splits.train, splits.val)
        trainer.save_model(path)
        self.log(f"{entry.name}: trained in {res['train_seconds']:.0f} s, val top-1 {res['val_accuracy']:.3f} -> {path}")
        return path, read_checkpoint(path)[1]

    # -- one preset -----------------------------------------------------------------------------
    def run_preset(self, entry: ZooEntry) -> list[dict[str, Any]]:
        import torch

        ckpt, meta = self.checkpoint(entry)
        arts = build_artifacts(ckpt, exporter=self.cfg.exporter, home=self.home, log=self.log)
        opt_note = arts.info.get("optimize", {}).get("note")
        if opt_note:
            self.log(f"{entry.name}: onnx-optimized: {opt_note}")
        splits = self.splits()
        test = splits.test
        torch.set_num_threads(self.threads)
        ref_model = arts.torch_model("cpu")
        base_params = {
            "preset": entry.name, "num_params": count_parameters(ref_model),
            "gflops": round(estimate_gflops(entry, len(arts.labels)), 4), "d_model": entry.d_model,
            "heads": entry.heads, "layers": entry.layers, "dim_ff": entry.dim_ff, "threads": self.threads,
            "exporter": arts.info.get("export", {}).get("exporter"), "opset": arts.info.get("export", {}).get("opset"),
            "num_classes": len(arts.labels), "data": splits.spec, "test_size": len(test),
        }
        training = {k: v for k, v in (meta.get("result") or {}).items() if k != "run_id"}
        # parity inputs: random batches of several shapes + real held-out clips
        rng = np.random.default_rng(self.cfg.seed)
        parity_inputs = [
            (rng.standard_normal((3, 64, 469)).astype(np.float32), rng.random((3, 64)) > 0.1),
            (rng.standard_normal((2, 100, 469)).astype(np.float32), np.ones((2, 100), bool)),
            (test.features[:PARITY_SAMPLES], test.mask[:PARITY_SAMPLES]),
        ]
        with torch.inference_mode():
            refs = [ref_model(torch.from_numpy(x), torch.from_numpy(m)).numpy() for x, m in parity_inputs]
            ref_test = np.concatenate([ref_model(torch.from_numpy(test.features[i:i + 128]),
                                                 torch.from_numpy(test.mask[i:i + 128])).numpy()
                                       for i in range(0, len(test), 128)])
        ref_pred = ref_test.argmax(1)

        records: list[dict[str, Any]] = []
        runners: dict[str, Any] = {}
        for be in self.selected:
            cls = be.cls
            rec: dict[str, Any] = {
                "result_id": uuid.uuid4().hex, "preset": entry.name, "backend": cls.name, "status": "ok",
                "reason": "", "plugin": be.plugin.name + ("" if be.plugin.package == "built-in" else f" ({be.plugin.package})"),
                "params": {**base_params, "precision": cls.precision, "artifact": cls.artifact,
                           "artifact_sha256": arts.hashes.get(cls.artifact, "")},
                "latency": {}, "accuracy": {}, "parity": {}, "training": training, "describe": {}, "run_id": None,
            }
            records.append(rec)
            avail = cls.availability()
            if not avail.ok:
                rec.update(status="unavailable", reason=avail.reason)
                self.log(f"{entry.name}/{cls.name}: unavailable: {avail.reason}")
                continue
            gc.collect()
            rss0 = _rss_mb()
            try:
                runner = cls(RunnerOptions(threads=self.threads))
                runner.prepare(arts)
                rec["describe"] = runner.describe()
                rec["params"]["provider"] = rec["describe"].get("provider", "")
                # parity
                outs = [runner.run(x, m) for x, m in parity_inputs]
                res = compare(np.concatenate([o.reshape(-1) for o in outs]).reshape(-1, outs[0].shape[1]),
                              np.concatenate([r.reshape(-1) for r in refs]).reshape(-1, refs[0].shape[1]),
                              cls.precision)
                rec["parity"] = res.to_dict()
                if not res.ok:
                    rec.update(status="parity-failed", reason=res.message)
                    self.log(f"{entry.name}/{cls.name}: PARITY FAILED: {res.message}")
                # accuracy on the held-out split, through this backend
                if self.cfg.accuracy:
                    from .metrics import classification_report

                    logits = np.concatenate([runner.run(test.features[i:i + 64], test.mask[i:i + 64])
                                             for i in range(0, len(test), 64)])
                    rep = classification_report(logits, test.labels, len(arts.labels))
                    rec["accuracy"] = {"top1": rep["top1"], "top5": rep["top5"], "macro_f1": rep["macro_f1"],
                                       "agreement_top1": float((logits.argmax(1) == ref_pred).mean())}
                runner.synchronize()
                # resident memory this backend added while preparing and running parity/accuracy: a lower
                # bound (backends share one process and allocator pools), never negative
                rec["memory_mb"] = round(max(0.0, _rss_mb() - rss0), 1)
                runners[cls.name] = runner
            except BackendUnavailable as exc:
                rec.update(status="unavailable", reason=str(exc))
                self.log(f"{entry.name}/{cls.name}: unavailable: {exc}")
            except Exception as exc:  # noqa: BLE001 - one broken backend must not stop the others
                rec.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
                rec["traceback"] = traceback.format_exc(limit=5)
                self.log(f"{entry.name}/{cls.name}: FAILED: {type(exc).__name__}: {exc}")

        # latency, interleaved across the prepared backends, per batch size
        for batch in self.cfg.batch_sizes:
            idx = np.arange(batch) % len(test)
            x, m = np.ascontiguousarray(test.features[idx]), np.ascontiguousarray(test.mask[idx])
            calls = {name: ((lambda r=r: r.run(x, m)), r.synchronize if r.asynchronous else None)
                     for name, r in runners.items()}
            if not calls:
                break
            self.log(f"{entry.name}: timing batch {batch} on {', '.join(calls)} (interleaved rounds) ...")
            stats = measure_interleaved(calls, batch, self.cfg.timing)
            for rec in records:
                st = stats.get(rec["backend"])
                if st is not None:
                    rec["latency"][str(batch)] = st.to_dict()
                    self.samples[f"{entry.name} / {rec['backend']} / b{batch}"] = st.samples_ms
        if self.cfg.stream and runners:
            self.stream_scenario(entry, runners, records, arts)
        for r in runners.values():
            r.close()
        return records

    def stream_scenario(self, entry, runners, records, arts) -> None:
        """Time from a sign's last frame to its prediction, through the streaming pipeline, per backend."""
        try:
            from .pipeline import measure_stream_latency
            from .synthetic import SyntheticSpec, generate
        except ImportError:
            return
        n = max(1, min(len(arts.labels), 20))
        clips, _ = generate(SyntheticSpec(num_classes=n, num_signers=1, clips_per_signer_per_class=max(1, 24 // n),
                                          seed=self.cfg.seed + 7))
        for rec in records:
            r = runners.get(rec["backend"])
            if r is None:
                continue
            try:
                rec["stream"] = measure_stream_latency(r, arts.labels, clips)
            except Exception as exc:  # noqa: BLE001
                rec["stream"] = {"error": f"{type(exc).__name__}: {exc}"}

    # -- whole invocation -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        if self.cfg.no_train:  # fail before any work when a checkpoint is missing
            for entry in self.entries:
                splits = self.splits()
                tcfg = self.training_config(entry)
                p = checkpoint_path(entry, len(splits.class_names), splits.fingerprint, tcfg.cache_key(), self.home)
                if not p.exists():
                    raise CheckpointError(f"--no-train: no cached checkpoint for preset {entry.name!r} ({p}); "
                                          "run bench without --no-train once to train it")
        for entry in self.entries:
            self.doc["records"].extend(self.run_preset(entry))
            write_json_atomic(self.json_path, self.doc)  # saved before any tracking call
        if self.cfg.json_path:
            write_json_atomic(Path(self.cfg.json_path), self.doc)
        extra = self.outputs()
        if self.cfg.track:
            tracker = Tracker(self.cfg.experiment)
            if tracker.active:
                ok = upload(self.doc, self.json_path, tracker, artifacts=extra)
                if not ok:
                    self.log(f"warning: tracking failed ({tracker.reason}); results kept in {self.json_path}; "
                             "run `signflow-zoo sync` once the store is back")
                else:
                    self.log(f"tracked in MLflow ({tracker.uri}), experiment {self.cfg.experiment!r}, "
                             f"parent run {self.doc['tracking']['parent_run_id']}")
            else:
                self.log(f"warning: MLflow tracking off ({tracker.reason}); results kept in {self.json_path}; "
                         "run `signflow-zoo sync` once the store is reachable")
        if self.cfg.json_path:
            write_json_atomic(Path(self.cfg.json_path), self.doc)
        return self.doc

    def outputs(self) -> list[Path]:
        """Table and plots next to the JSON, logged with the parent run."""
        out: list[Path] = []
        try:
            from . import report
        except ImportError:
            return out
        flat = flat_records(self.doc)
        stem = self.json_path.with_suffix("")
        md = stem.with_name(stem.name + "-table.md")
        md.write_text(report.comparison_table(flat, fmt="markdown"))
        out.append(md)
        if self.cfg.plots:
            plots = [("pareto", lambda p: report.plot_pareto(flat, p, batch_size=self.cfg.batch_sizes[0]))]
            for entry in self.entries:  # one latency figure per preset keeps each readable
                samples = {k: v for k, v in self.samples.items() if k.startswith(f"{entry.name} / ")}
                if samples:
                    plots.append((f"latency-{entry.name}", lambda p, s=samples, n=entry.name:
                                  report.plot_latency_distributions(s, p, title=f"Per-iteration latency: {n}")))
            for name, fn in plots:
                path = stem.with_name(f"{stem.name}-{name}.png")
                try:
                    out.append(Path(fn(path)))
                except (SignFlowError, ImportError) as exc:
                    self.log(f"note: {name} plot skipped: {exc}")
        self.doc["outputs"] = [str(p) for p in out]
        write_json_atomic(self.json_path, self.doc)
        return out


def run_bench(config: BenchConfig, log=None) -> dict[str, Any]:
    return Bench(config, log).run()
