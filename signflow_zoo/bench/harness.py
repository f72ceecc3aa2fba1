"""The benchmark harness: train or load, export, check parity, measure latency and accuracy, track.

``run_bench(BenchConfig(...))`` is what ``signflow-zoo bench`` calls. Per preset: the checkpoint
(cached or trained), the artifacts (exported once, content-hashed), then every selected backend in its
own worker process (:mod:`signflow_zoo.bench.worker`): prepare, parity against the PyTorch fp32 reference,
accuracy on held-out signers, latency in the configured schedule (:mod:`signflow_zoo.bench.schedule`), the
streaming scenario and the worker's memory (:mod:`signflow_zoo.bench.scenarios`). A fixed reference workload is
timed before, between and after the presets (drift), and a second one, a small ONNX Runtime graph at the bench's
thread count, also between rounds of the schedule (:mod:`signflow_zoo.bench.stability`): its spread is the run's
``stability`` verdict and its readings normalize the p50s. The result file is written after every preset and
before any tracking call, so a failing tracking server loses nothing (``signflow-zoo sync`` uploads later).

Why one module of ~550 lines: it is the bench's sequence of steps, read top to bottom; each step's work is
elsewhere (scenarios, schedule, worker, records, results, tracking), and splitting the sequence would only
scatter the order in which they run.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from signflow_zoo.common import limits

from signflow_zoo.backends.artifacts import build_artifacts
from signflow_zoo.model.checkpoint import checkpoint_path
from signflow_zoo.common.cachefiles import HeldLock, lock_path, zoo_home
from signflow_zoo.common.environment import environment
from signflow_zoo.common.errors import BackendError, CheckpointError, SignFlowError
from signflow_zoo.data.features import FEATURE_DIM
from signflow_zoo.results.store import INVOCATION_ID_TAG
from signflow_zoo.model.network import count_parameters, estimate_gflops
from signflow_zoo.common.output_paths import check_output_file
from signflow_zoo.model.presets import check_batch_memory, training_config
from signflow_zoo.plugins import PluginRegistry, get_registry
from signflow_zoo.results.records import BenchDocument, BenchRecord
from signflow_zoo.results.files import EXPERIMENT, flat_records, now_iso, upload, write_json_atomic, write_result
from signflow_zoo.backends.runner import RunnerOptions
from signflow_zoo.bench.stability import StabilityMonitor
from signflow_zoo.bench.timing import TimingConfig, reference_workload
from signflow_zoo.bench.weights import ModelFile, Weights, command_inputs
from signflow_zoo import report
from signflow_zoo.results.tracking import Tracker
from signflow_zoo.model.zoo import Zoo, ZooEntry

PARITY_SAMPLES = 64
# idle before a stability reading between rounds: the last block's spinning threads (ORT, OpenMP) must be asleep,
# or they slow the reading; 50 ms is the gap that cleared every runtime in benchmarks/SCHEDULE.md
PRE_READ_SETTLE_S = 0.05
REFERENCE_BACKEND = "torch-eager"
DEFAULT_PRESETS = "lightweight"
# what bench measures (docs/deployment.md): latency is the closed-loop timing at each batch size plus the replayed
# stream; the deployment scenarios take minutes per backend, so they run when asked for
SCENARIOS = ("latency", "capacity", "server", "offline", "cold-start")
DEFAULT_SCENARIOS = ("latency",)


@dataclass
class BenchConfig:
    presets: str = DEFAULT_PRESETS  # "all", a name, or "a,b"
    model: str | None = None  # a model file (.pt checkpoint or .onnx) benched instead of presets (bench --model)
    labels: str | None = None  # the model's labels file (one per line, or a JSON list), for --model
    backends: str = "all"
    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int | None = None  # None = all cores of this machine, for every backend alike
    timing: TimingConfig = field(default_factory=TimingConfig)
    check_timing: bool = False  # also time every backend alone and store solo vs scheduled
    data: str = "synthetic"
    seed: int = 0
    no_train: bool = False
    retrain: bool = False
    from_registry: bool = False  # weights must come from the cache or the Model Registry, never trained here
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
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    deadline_ms: float = 100.0  # capacity: sign end -> prediction p99 within this (bench.capacity.DEFAULT_DEADLINE_MS)
    max_batch_wait_ms: float = 10.0  # capacity, batched: how long a sign end waits for others (0: no batched search)
    bound_ms: float = 100.0  # server: request p99 within this
    cold_start_runs: int = 3
    # finer settings of the searches (fields of bench.capacity.CapacityConfig / bench.server.ServerConfig, e.g.
    # {"budget_s": 20, "min_signs": 500}); the defaults are documented in docs/deployment.md
    capacity_options: dict[str, Any] = field(default_factory=dict)
    server_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw) -> "BenchConfig":
        """Short timing for a smoke run; numbers are flagged by their low iteration counts."""
        cfg = cls(**kw)
        cfg.batch_sizes = kw.get("batch_sizes", (1, 8))
        cfg.timing = TimingConfig(warmup=3, min_iters=10, tail_iters=0, min_time=0.2, block_time=0.05, settle_time=0.005)
        return cfg

    def validate(self) -> "BenchConfig":
        """Ranges from :mod:`signflow_zoo.common.limits`; a ``json_path`` that cannot be written fails here, before any work."""
        sizes = list(self.batch_sizes or ())
        if not sizes or len(sizes) > limits.MAX_BATCH_SIZES or any(b not in limits.BATCH_SIZE for b in sizes):
            raise SignFlowError(f"batch sizes must be 1 to {limits.MAX_BATCH_SIZES} integers, each "
                                f"{limits.BATCH_SIZE.text}, got {sizes}")
        t = self.timing
        for name, value, r in (("threads", self.threads, limits.THREADS), ("epochs", self.epochs, limits.EPOCHS),
                               ("seed", self.seed, limits.SEED), ("warmup", t.warmup, limits.WARMUP),
                               ("min-iters", t.min_iters, limits.MIN_ITERS), ("tail-iters", t.tail_iters, limits.TAIL_ITERS),
                               ("min-time", t.min_time, limits.MIN_TIME),
                               ("timeout", t.timeout, limits.TIMEOUT)):
            if value is not None and value not in r:
                raise SignFlowError(f"--{name} must be {r.what}, got {value!r}")
        self.timing.validate()
        self.scenarios = parse_scenarios(self.scenarios)
        for flag, value, lo, hi in (("--deadline-ms", self.deadline_ms, 1.0, 60_000.0),
                                    ("--bound-ms", self.bound_ms, 1.0, 60_000.0),
                                    ("--max-batch-wait-ms", self.max_batch_wait_ms, 0.0, 1_000.0)):
            if not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
                raise SignFlowError(f"{flag} must be a number of milliseconds from {lo:g} to {hi:g}, got {value!r}")
        from dataclasses import fields as _fields

        from signflow_zoo.bench.capacity import CapacityConfig
        from signflow_zoo.bench.server import ServerConfig

        for flag, opts, cls in (("capacity_options", self.capacity_options, CapacityConfig),
                                ("server_options", self.server_options, ServerConfig)):
            known = {f.name for f in _fields(cls)}
            unknown = sorted(set(opts) - known)
            if unknown:
                raise SignFlowError(f"{flag}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if not isinstance(self.cold_start_runs, int) or not 3 <= self.cold_start_runs <= 20:
            raise SignFlowError(f"cold-start runs must be an integer from 3 to 20, got {self.cold_start_runs!r}")
        if self.model is not None:
            if self.presets != DEFAULT_PRESETS:
                raise SignFlowError("--model and --preset are mutually exclusive: bench zoo presets, or one model file")
            for flag, given in (("--retrain", self.retrain), ("--from-registry", self.from_registry),
                                ("--epochs", self.epochs is not None)):
                if given:
                    raise SignFlowError(f"{flag} does not apply to --model: a model file is benched as it is, never trained")
        elif self.labels is not None:
            raise SignFlowError("--labels goes with --model: it gives the labels of a model file")
        if self.data.strip().startswith("synthetic"):  # its numbers are checked here; files when they are read
            from signflow_zoo.data.loading import parse_synthetic_spec

            parse_synthetic_spec(self.data.strip(), self.seed)
        self.json_output()
        return self

    def json_output(self) -> Path | None:
        """Where ``json_path`` is written (its target when it is a symbolic link: the link stays a link); checked:
        a regular file or a new one, never a file the bench reads (zoo file, data set, zoo home)."""
        if self.json_path is None:
            return None
        return check_output_file(self.json_path, "--json", command_inputs(
            self.data, self.zoo_file, files=(("the model file --model", self.model), ("the labels file --labels", self.labels))))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch_sizes"] = list(self.batch_sizes)
        d["scenarios"] = list(self.scenarios)
        return d


def parse_scenarios(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"latency,capacity"``, ``"all"`` or a sequence of names -> the names, in :data:`SCENARIOS` order."""
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if str(n).strip()]
    if names == ["all"]:
        return SCENARIOS
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise SignFlowError(f"unknown scenario(s) {', '.join(map(repr, unknown)) or '(none given)'}: choose from "
                            f"{', '.join(SCENARIOS)} (comma-separated) or all")
    return tuple(n for n in SCENARIOS if n in names)


SPLIT_PARTS = ("train", "val", "test")
SPLITS_CACHE_VERSION = 2  # bump when what DataSplits holds (or how its fingerprint is made) changes


def load_splits_cached(spec: str, seed: int, home: Path):
    """Synthetic data sets are derived purely from their spec: cache their features as .npz (no pickle).

    File-based data sets are always read afresh (the files may change).
    """
    from signflow_zoo.common.cachefiles import stable_hash
    from signflow_zoo.data.loading import DataSplits, SignDataset, load_data, parse_synthetic_spec
    from signflow_zoo.data.features import FEATURE_VERSION
    from signflow_zoo.data.synthetic import GENERATOR_VERSION

    if not spec.strip().startswith("synthetic"):
        return load_data(spec, seed=seed)
    syn = parse_synthetic_spec(spec, seed)  # validates the spec before anything is cached
    key = stable_hash({"spec": syn.to_dict(), "seed": seed, "generator": GENERATOR_VERSION, "features": FEATURE_VERSION,
                       "cache": SPLITS_CACHE_VERSION})
    path = home / "data" / f"synthetic-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                names = [str(x) for x in z["class_names"]]
                parts = {p: SignDataset(z[f"{p}_features"], z[f"{p}_mask"], z[f"{p}_labels"], names,
                                        [str(x) for x in z[f"{p}_signers"]]) for p in SPLIT_PARTS}
                return DataSplits(**parts, class_names=names, spec=str(z["spec"]), fingerprint=str(z["fingerprint"]),
                                  split=str(z["split"]))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # a derived cache file (truncated, corrupt): rebuild it below
    splits = load_data(spec, seed=seed)
    arrays: dict[str, Any] = {"class_names": np.array(splits.class_names), "spec": np.array(splits.spec),
              "fingerprint": np.array(splits.fingerprint), "split": np.array(splits.split)}
    for p in SPLIT_PARTS:
        ds = getattr(splits, p)
        arrays.update({f"{p}_features": ds.features, f"{p}_mask": ds.mask, f"{p}_labels": ds.labels,
                       f"{p}_signers": np.array(ds.signers)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz")  # unique: concurrent benches
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return splits



class Bench:
    """One ``bench`` invocation. ``registry`` defaults to the process-wide plugin registry."""

    def __init__(self, config: BenchConfig, log: Callable[[str], None] | None = None,
                 registry: PluginRegistry | None = None, cluster: dict[str, Any] | None = None):
        self.cfg = config.validate()
        self.json_out = config.json_output()  # resolved once, before the bench writes anything into the zoo home
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.zoo = Zoo.load(config.zoo_file)
        # bench --model: one "entry", the model file's (read now: its errors come before any work)
        self.model_file = ModelFile(config.model, config.labels, self.log) if config.model else None
        self.entries = [self.model_file.entry] if self.model_file else self.zoo.select(config.presets)
        self.registry = registry or get_registry()
        self.selected = self.registry.select(config.backends)
        self.threads = config.threads or os.cpu_count() or 1
        self.home = zoo_home()
        invocation = uuid.uuid4().hex[:12]
        created = now_iso()
        stamp = created.replace(":", "").replace("-", "")
        self.json_path = self.home / "results" / f"bench-{stamp}-{invocation}.json"
        self.doc = BenchDocument(
            invocation_id=invocation, created=created, environment=environment(),
            config={**config.to_dict(), "threads": self.threads, **(self.model_file.config() if self.model_file else {})},
            tracking={"uploaded": False, "experiment": config.experiment, **({"cluster": dict(cluster)} if cluster else {})},
            result_file=str(self.json_path))
        self.stability = StabilityMonitor(self.threads, self.doc.stability)  # its session opens at the first read
        self._stability_error = ""
        self._splits = None
        self.weights = Weights(self.cfg.exporter, self.home, self.log)

    # -- data and checkpoints -------------------------------------------------------------------
    def splits(self):
        if self._splits is None:
            self.log(f"data: {self.cfg.data} (seed {self.cfg.seed})")
            splits = load_splits_cached(self.cfg.data, self.cfg.seed, self.home)
            # a model file's labels must be the data's classes (then numbered in its output order)
            self._splits = self.model_file.match_data(splits) if self.model_file else splits
        return self._splits

    def training_config(self, entry: ZooEntry):
        return training_config(entry, epochs=self.cfg.epochs, seed=self.cfg.seed, progress=self.cfg.progress,
                               track=self.cfg.track, tags={INVOCATION_ID_TAG: self.doc.invocation_id})

    def checkpoint_file(self, entry: ZooEntry) -> Path:
        splits = self.splits()
        tcfg = self.training_config(entry)
        return checkpoint_path(entry, len(splits.class_names), splits.fingerprint, tcfg.cache_key(), self.home)

    def checkpoint(self, entry: ZooEntry) -> tuple[Path, dict[str, Any]]:
        """Cache -> Model Registry -> train (then register): :meth:`signflow_zoo.bench.weights.Weights.obtain`."""
        return self.weights.obtain(entry, self.splits(), self.training_config(entry), self.checkpoint_file(entry),
                                   retrain=self.cfg.retrain, no_train=self.cfg.no_train,
                                   from_registry=self.cfg.from_registry, track=self.cfg.track)

    def _reference(self, arts, test) -> tuple[list, list, np.ndarray]:
        """Parity inputs (random batches of two shapes + held-out clips) and the PyTorch fp32 reference (for an
        ONNX-only model file, bench --model: onnx-cpu on the file, which its records say)."""
        import torch

        torch.set_num_threads(self.threads)
        forward: Callable[[np.ndarray, np.ndarray], np.ndarray]
        if arts.checkpoint is None and self.model_file is not None:  # an ONNX-only model: ONNX Runtime's CPU provider
            runner = self.model_file.reference_runner(arts, self.threads)
            forward = lambda x, m: runner.run(np.ascontiguousarray(x), np.ascontiguousarray(m))  # noqa: E731
        else:
            ref_model = arts.torch_model("cpu")
            forward = lambda x, m: ref_model(torch.from_numpy(x), torch.from_numpy(m)).numpy()  # noqa: E731
        rng = np.random.default_rng(self.cfg.seed)
        inputs = [
            (rng.standard_normal((3, 64, FEATURE_DIM)).astype(np.float32), rng.random((3, 64)) > 0.1),
            (rng.standard_normal((2, 100, FEATURE_DIM)).astype(np.float32), np.ones((2, 100), bool)),
            (np.ascontiguousarray(test.features[:PARITY_SAMPLES]), np.ascontiguousarray(test.mask[:PARITY_SAMPLES])),
        ]
        with torch.inference_mode():
            refs = [forward(x, m) for x, m in inputs]
            ref_test = np.concatenate([forward(test.features[i:i + 128], test.mask[i:i + 128])
                                       for i in range(0, len(test), 128)])
        return inputs, refs, ref_test.argmax(1)

    def _lanes(self, entry: ZooEntry, arts, base_params: dict[str, Any], training: dict[str, Any],
               calibration: dict[str, Any]):
        from signflow_zoo.bench.scenarios import Lane
        from signflow_zoo.bench.worker import BackendWorker, WorkerSpec

        lanes = []
        for be in self.selected:
            cls = be.cls
            plugin = be.plugin.name + ("" if be.plugin.package == "built-in" else f" ({be.plugin.package})")
            rec = BenchRecord(
                result_id=uuid.uuid4().hex, preset=entry.name, backend=cls.name, plugin=plugin,
                params={**base_params, "precision": cls.precision, "artifact": cls.artifact},
                training=training, calibration=calibration)
            lane = Lane(rec, None, cls.precision, getattr(cls, "tolerance", None))
            lanes.append(lane)
            avail = self.registry.availability(cls.name)  # never raises: a plugin's failure is "broken"
            if not avail.ok:
                rec.fail("broken" if getattr(avail, "broken", False) else "unavailable", avail.reason)
                self.log(f"{entry.name}/{cls.name}: {rec.status}: {avail.reason}")
                continue
            missing = self.model_file.missing_artifact(arts, cls.artifact, self.registry) if self.model_file else None
            if missing:  # e.g. a torch backend on an ONNX file: never another model in its place
                rec.fail("unavailable", missing)
                self.log(f"{entry.name}/{cls.name}: {rec.status}: {missing}")
                continue
            if not self._ensure_kind(arts, cls, rec):
                continue
            try:
                lane.worker = BackendWorker(cls.name, WorkerSpec(cls, self._options(), arts),
                                            self.cfg.timing.timeout)
            except BackendError as exc:
                rec.fail("failed", str(exc))
        return lanes

    def _options(self) -> RunnerOptions:
        """The same options for every backend: threads, and the input shapes the bench will time (backends
        with fixed-shape graphs build them at prepare instead of during the first timed calls)."""
        frames = int(self.splits().test.features.shape[1])
        return RunnerOptions(threads=self.threads, extra={"graph_shapes": [(int(b), frames) for b in self.cfg.batch_sizes],
                                                          "compile_shapes": [(int(b), frames) for b in self.cfg.batch_sizes]})

    def _ensure_kind(self, arts, cls, rec: BenchRecord) -> bool:
        """Build (or find cached) the artifact kind this backend consumes; record its hash, or why it failed."""
        from signflow_zoo.backends.kinds import ensure_artifact

        try:
            ensure_artifact(arts, cls.artifact, self.registry, home=self.home, calibration=self._calibration(),
                            log=self.log)
        except BackendError as exc:  # BackendUnavailable included: e.g. its converter is not installed
            # a plugin's build() run in a child process that crashed or hung: ArtifactBuildFailed.status
            status = getattr(exc, "status", None) or (
                "unavailable" if type(exc).__name__ == "BackendUnavailable" else "failed")
            rec.fail(status, f"artifact {cls.artifact!r}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a plugin's converter failing is that backend's row
            rec.fail("failed", f"building artifact {cls.artifact!r} failed: {type(exc).__name__}: {exc}")
        if rec.status != "ok":
            self.log(f"{rec.preset}/{rec.backend}: {rec.status}: {rec.reason}")
            return False
        rec.params["artifact_sha256"] = arts.hashes.get(cls.artifact, "")
        return True

    def _calibration(self):
        """Batches of training-split clips for artifact kinds that calibrate (static int8): never test data."""
        train = self.splits().train

        def batches(n: int):
            n = min(int(n), len(train))
            for i in range(0, n, 32):
                j = min(n, i + 32)
                yield np.ascontiguousarray(train.features[i:j]), np.ascontiguousarray(train.mask[i:j])

        batches.fingerprint = f"{self.splits().fingerprint}:train"  # type: ignore[attr-defined]
        return batches

    def run_preset(self, entry: ZooEntry) -> list[BenchRecord]:
        from signflow_zoo.bench import scenarios

        if self.model_file is not None:  # bench --model: the file's artifacts, never a zoo checkpoint
            arts, meta = self.model_file.artifacts(self.cfg.exporter, self.home, self.log)
        else:
            ckpt, meta = self.checkpoint(entry)
            arts = build_artifacts(ckpt, exporter=self.cfg.exporter, home=self.home, log=self.log)
        opt_note = arts.info.get("optimize", {}).get("note")
        if opt_note:
            self.log(f"{entry.name}: onnx-optimized: {opt_note}")
        splits = self.splits()
        test = splits.test
        inputs, refs, ref_pred = self._reference(arts, test)
        base_params = {
            "preset": entry.name, "num_params": count_parameters(arts.torch_model("cpu"))
            if self.model_file is None or arts.checkpoint else self.model_file.num_params,
            "gflops": round(estimate_gflops(entry, len(arts.labels)), 4), "d_model": entry.d_model,
            "heads": entry.heads, "layers": entry.layers, "dim_ff": entry.dim_ff, "threads": self.threads,
            "exporter": arts.info.get("export", {}).get("exporter"), "opset": arts.info.get("export", {}).get("opset"),
            "num_classes": len(arts.labels), "data": splits.spec, "data_split": getattr(splits, "split", ""),
            "test_size": len(test), **(self.model_file.params() if self.model_file else {}),
        }
        training = {k: v for k, v in (meta.get("result") or {}).items() if k != "run_id"}
        lanes = self._lanes(entry, arts, base_params, training, dict(meta.get("calibration") or {}))
        try:
            for lane in lanes:
                if lane.worker is not None:
                    scenarios.prepare(lane, self.log)
            for lane in lanes:
                if lane.live:
                    scenarios.parity(lane, inputs, refs, self.log)
                if lane.live and self.cfg.accuracy:
                    scenarios.accuracy(lane, test, len(arts.labels), ref_pred, self.log)
            outcomes = {}
            for batch in self.cfg.batch_sizes if "latency" in self.cfg.scenarios else ():
                if not any(ln.live for ln in lanes):
                    break
                idx = np.arange(batch) % len(test)
                x, m = np.ascontiguousarray(test.features[idx]), np.ascontiguousarray(test.mask[idx])
                names = ", ".join(ln.record.backend for ln in lanes if ln.live)
                self.log(f"{entry.name}: timing batch {batch} on {names} ({self.cfg.timing.schedule} schedule"
                         + (", and each alone" if self.cfg.check_timing else "") + ") ...")
                outcomes[batch] = scenarios.latency(lanes, batch, x, m, self.cfg.timing, self.cfg.check_timing, self.log,
                                                    between_rounds=self._between_rounds(f"{entry.name} b{batch}"))
            scenarios.speedups([ln.record for ln in lanes], outcomes, REFERENCE_BACKEND)
            if self.cfg.stream and "latency" in self.cfg.scenarios:
                clips = self._stream_clips(len(arts.labels))
                for lane in lanes:
                    if lane.live:
                        scenarios.streaming(lane, arts.labels, clips)
            for lane in lanes:
                if lane.live:
                    scenarios.memory(lane)  # before the deployment scenarios, whose streams hold memory of their own
            self.deployment(entry, lanes, arts, test)
        finally:
            for lane in lanes:
                if lane.worker is not None:
                    lane.worker.close()
                    lane.worker = None
        return [ln.record for ln in lanes]

    def deployment(self, entry: ZooEntry, lanes: list, arts, test) -> None:
        """The scenarios a deployment decision needs (docs/deployment.md), backend after backend (the others idle)."""
        from signflow_zoo.bench import scenarios
        from signflow_zoo.bench.server import OFFLINE_BATCHES

        chosen = [s for s in self.cfg.scenarios if s != "latency"]
        if not chosen:
            return
        cap = {"deadline_ms": float(self.cfg.deadline_ms), "seed": self.cfg.seed, **self.cfg.capacity_options}
        batched = {**cap, "max_batch_wait_ms": float(self.cfg.max_batch_wait_ms)}
        clips = self._stream_clips(len(arts.labels)) if "capacity" in chosen else []
        requests = [(np.ascontiguousarray(test.features[i:i + 1]), np.ascontiguousarray(test.mask[i:i + 1]))
                    for i in range(min(64, len(test)))]
        n_off = min(len(test), max(OFFLINE_BATCHES))
        for lane in lanes:
            for name in chosen:
                if not lane.live:
                    break
                self.read_stability(f"{entry.name}/{lane.record.backend} before {name}")  # the run's verdict covers it
                self.log(f"{entry.name}/{lane.record.backend}: {name} ...")
                if name == "capacity":
                    scenarios.capacity(lane, arts.labels, clips, cap,
                                       batched if self.cfg.max_batch_wait_ms > 0 else {})
                    self._log_capacity(lane.record)
                elif name == "server":
                    scenarios.server(lane, requests, {"bound_ms": float(self.cfg.bound_ms), "seed": self.cfg.seed,
                                                      **self.cfg.server_options})
                elif name == "offline":
                    scenarios.offline(lane, np.ascontiguousarray(test.features[:n_off]),
                                      np.ascontiguousarray(test.mask[:n_off]), OFFLINE_BATCHES)
                elif name == "cold-start":
                    be = self.registry.runners[lane.record.backend]
                    scenarios.cold_start(lane, be.cls, self._options(), arts, requests[0][0], requests[0][1],
                                         self.cfg.cold_start_runs, self.cfg.timing.timeout + 120.0)

    def _log_capacity(self, rec: BenchRecord) -> None:
        c = rec.capacity
        if "streams" in c:
            b = c.get("batched") or {}
            more = f"; batched ({b.get('max_batch_wait_ms')} ms window): {b['streams']}" if "streams" in b else ""
            self.log(f"{rec.preset}/{rec.backend}: {c['streams']} streams at {c['fps']:g} fps within "
                     f"{c['deadline_ms']:g} ms p99{more}")

    def _stream_clips(self, num_labels: int) -> list:
        from signflow_zoo.data.synthetic import SyntheticSpec, generate

        n = max(1, min(num_labels, 20))
        clips, _ = generate(SyntheticSpec(num_classes=n, num_signers=1, clips_per_signer_per_class=max(1, 24 // n),
                                          seed=self.cfg.seed + 7))
        return [c.raw for c in clips]

    # -- drift ------------------------------------------------------------------------------------
    def read_reference(self, at: str) -> float:
        ms = reference_workload()
        self.doc.drift.readings.append({"at": at, "ms": ms, "time": now_iso()})
        return ms

    def ceilings(self) -> dict[str, Any]:
        """This machine's matmul ceilings per precision, measured once per machine and thread count (cached)."""
        from signflow_zoo.bench import roofline

        if not self.doc.ceilings:
            try:
                rec = roofline.load_or_measure(self.threads, home=self.home)
                self.doc.ceilings = {"gflops": dict(rec["ceilings"]), "measured_at": rec.get("measured_at", ""),
                                     "load_avg_1min": rec.get("load_avg_1min"),
                                     "engines": rec.get("ceiling_engines", {}), "threads": self.threads}
            except Exception as exc:  # noqa: BLE001 - no roofline is a missing column, not a failed bench
                self.log(f"note: roofline ceilings not measured: {type(exc).__name__}: {exc}")
                self.doc.ceilings = {"error": f"{type(exc).__name__}: {exc}"}
        return self.doc.ceilings.get("gflops", {})

    def roofline(self, records: list[BenchRecord]) -> None:
        """Per result and batch size: achieved GFLOP/s and the share of the CPU ceiling of its precision."""
        from signflow_zoo.bench import roofline
        from signflow_zoo.common.errors import InputError

        ceilings = self.ceilings()
        if not ceilings:
            return
        for rec in records:
            cls = self.registry.runners.get(rec.backend)
            if cls is None or getattr(cls.cls, "device_kind", "cpu") != "cpu":
                continue  # a GPU is held to a GPU's ceiling, which this CPU measurement is not
            for b, lat in rec.latency.items():
                try:
                    rec.roofline[b] = roofline.roofline(float(rec.params["gflops"]), b, lat.p50_ms,
                                                        str(rec.params.get("precision")), ceilings)
                except (InputError, KeyError, TypeError, ValueError):
                    continue

    def read_stability(self, at: str) -> float | None:
        """One reading of the run-stability reference, then the settling gap (its spinning threads go quiet before
        the next timed block). A reference that cannot run costs its readings (status "unknown"), never the bench."""
        if self._stability_error:
            return None
        try:
            ms = self.stability.read(at)
        except Exception as exc:  # noqa: BLE001 - e.g. a broken onnxruntime: no verdict, the results stand
            self._stability_error = f"{type(exc).__name__}: {exc}"
            self.log(f"note: run-stability reference not measured ({self._stability_error}); stability is unknown")
            return None
        time.sleep(self.cfg.timing.settle_time)
        return ms

    def _between_rounds(self, at: str) -> Callable[[bool], None]:
        """The schedule's hook after a round: a stability reading when one is due (at most one a second), at least
        :data:`PRE_READ_SETTLE_S` after the last block (``settled``: the schedule has just slept its own gap)."""

        def read(settled: bool) -> None:
            if not self._stability_error and self.stability.due():
                time.sleep(max(0.0, PRE_READ_SETTLE_S - (self.cfg.timing.settle_time if settled else 0.0)))
                self.read_stability(at)

        return read

    @staticmethod
    def normalize(records: list[BenchRecord], ref_ms: float | None) -> None:
        """p50 / ``ref_ms``, the mean stability reading during this preset: comparable across runs on a drifting
        machine (nothing when the reference could not be read)."""
        if not ref_ms:
            return
        for rec in records:
            for b, lat in rec.latency.items():
                rec.normalized_p50[b] = lat.p50_ms / ref_ms

    # -- whole invocation -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The bench, holding its result file's lock: `sync` leaves a file alone while its bench runs,
        and the file says ``tracking.in_progress`` until every preset is done (a bench that died keeps it)."""
        check_batch_memory(self.entries, self.cfg.batch_sizes, self.splits().test.features.shape[1],
                           backends=len(self.selected))  # before anything is written
        lock = HeldLock(self.json_path)
        self.doc.tracking["in_progress"] = {"pid": os.getpid(), "host": self.doc.environment.get("host", "")}
        try:
            return self._run()
        finally:
            lock.release()
            lock_path(self.json_path).unlink(missing_ok=True)

    def _run(self) -> dict[str, Any]:
        if self.cfg.no_train and self.model_file is None:  # fail before any work when a checkpoint is missing
            for entry in self.entries:
                p = self.checkpoint_file(entry)
                if not p.exists():
                    raise CheckpointError(f"--no-train: no cached checkpoint for preset {entry.name!r} ({p}); "
                                          "run bench without --no-train once to train it")
        # the stability reading before the matmul's: BLAS threads spin for ~0.1 s after it and slowed the next
        # reading up to 4x; the between-rounds readings are a second or more away from it
        self.read_stability("start")
        self.read_reference("start")
        try:
            for entry in self.entries:
                first = max(0, len(self.stability.readings) - 1)  # the reading just before this preset
                records = self.run_preset(entry)
                self.read_stability(f"after {entry.name}")
                self.read_reference(f"after {entry.name}")
                self.normalize(records, self.stability.mean_ms(first))
                self.roofline(records)
                self.doc.records.extend(records)
                write_result(self.doc)  # saved before any tracking call
        finally:
            self.stability.close()
        self.doc.drift.readings[-1]["at"] += " (end)"
        if self.stability.readings:
            self.stability.readings[-1]["at"] += " (end)"
        self._report_drift()
        self._report_stability()
        self.doc.tracking.pop("in_progress", None)
        doc = self.doc.to_dict()
        write_result(doc)
        if self.json_out is not None:
            write_json_atomic(self.json_out, doc)
        extra = self.outputs(doc)
        if self.cfg.track:
            tracker = Tracker(self.cfg.experiment)
            if tracker.active:
                ok = upload(doc, self.json_path, tracker, artifacts=extra)
                if not ok:
                    self.log(f"warning: tracking failed ({tracker.reason}); results kept in {self.json_path}; "
                             "run `signflow-zoo sync` once the store is back")
                else:
                    self.log(f"tracked in MLflow ({tracker.uri}), experiment {self.cfg.experiment!r}, "
                             f"parent run {doc['tracking']['parent_run_id']}")
            else:
                self.log(f"warning: MLflow tracking off ({tracker.reason}); results kept in {self.json_path}; "
                         "run `signflow-zoo sync` once the store is reachable")
        if self.json_out is not None:
            write_json_atomic(self.json_out, doc)
        return doc

    def _report_drift(self) -> None:
        d = self.doc.drift
        if d.ratio is not None:
            self.log(f"machine drift: reference workload {d.readings[0]['ms']:.2f} ms at start, "
                     f"{d.readings[-1]['ms']:.2f} ms at end ({100 * (d.ratio - 1):+.1f}%; spread {d.spread:.2f}x)")

    def _report_stability(self) -> None:
        st = self.doc.stability
        spread = st.spread
        if st.status == "unstable" and spread is not None:  # "unstable" is a verdict on a spread
            ms = [r["ms"] for r in st.readings]
            self.log(f"warning: results of this run are unstable: reference workload moved {100 * (spread - 1):.0f}% "
                     f"during the run (spread {spread:.2f}x over {len(ms)} readings, {min(ms):.3f}-{max(ms):.3f} ms; "
                     f"threshold {st.threshold:.2f}x); rerun on a quieter machine")

    def outputs(self, doc: dict[str, Any]) -> list[Path]:
        """Table and plots next to the JSON, logged with the parent run."""
        out: list[Path] = []
        flat = flat_records(doc)
        stem = self.json_path.with_suffix("")
        md = stem.with_name(stem.name + "-table.md")
        deployment = report.deployment_table(flat, fmt="markdown")
        md.write_text(report.comparison_table(flat, fmt="markdown")
                      + (f"\n\n## Deployment\n\n{deployment}\n" if deployment else ""))
        out.append(md)
        if self.cfg.plots:
            plots: list[tuple[str, Callable[..., Any]]] = []
            if "latency" in self.cfg.scenarios:
                plots.append(("pareto", lambda p: report.plot_pareto(flat, p, batch_size=self.cfg.batch_sizes[0])))
            if any(r.get("capacity_streams") is not None for r in flat):
                plots.append(("streams-per-machine", lambda p: report.plot_capacity(flat, p)))
            for entry in self.entries:  # one latency figure per preset keeps each readable
                recs = [r for r in self.doc.records if r.preset == entry.name]  # batch by batch, as timed
                samples = {f"{r.preset} / {r.backend} / b{b}": [v for block in r.samples[b] for v in block]
                           for b in self.cfg.batch_sizes for r in recs if r.samples.get(b)}
                if samples:
                    plots.append((f"latency-{entry.name.replace(':', '-')}", lambda p, s=samples, n=entry.name:
                                  report.plot_latency_distributions(s, p, title=f"Per-call latency: {n}")))
            for name, fn in plots:
                path = stem.with_name(f"{stem.name}-{name}.png")
                try:
                    out.append(Path(fn(path)))
                except (SignFlowError, ImportError) as exc:
                    self.log(f"note: {name} plot skipped: {exc}")
                except Exception as exc:  # noqa: BLE001 - a figure must not cost the run: results are already saved
                    self.log(f"warning: {name} plot failed ({type(exc).__name__}: {exc}); the results are saved in "
                             f"{self.json_path}; `signflow-zoo report --plots DIR` draws them again")
        doc["outputs"] = [str(p) for p in out]
        self.doc.outputs = list(doc["outputs"])
        write_result(doc)
        return out


def run_bench(config: BenchConfig, log=None, registry: PluginRegistry | None = None,
              cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one bench (what ``signflow-zoo bench`` does) and return its result document.

    The document is also written to ``$SIGNFLOW_ZOO_HOME/results/`` before any tracking, logged to MLflow when
    ``config.track``, and described by ``docs/results.md``; ``log`` receives progress lines (default: stderr).
    ``registry`` defaults to the process-wide plugin registry (installed plugins included). ``cluster``
    (``{"run_id": ..., "host": ...}``, set by ``bench --cluster`` on each node) links the runs to their cluster run."""
    return Bench(config, log, registry, cluster).run()
