import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import TINY_DATA
from signflow_zoo.data.augment import _MIRROR, augment_batch
from signflow_zoo.data.features import FEATURE_DIM
from signflow_zoo.model.calibration import holdout_split, nll
from signflow_zoo.model.checkpoint import load_checkpoint, read_checkpoint
from signflow_zoo.data.loading import load_data
from signflow_zoo.common.errors import TrainingConfigError, TrainingDivergedError
from signflow_zoo.model.network import SignTransformer
from signflow_zoo.model.training import SignTrainer, TrainingConfig


@pytest.fixture(scope="module")
def tiny_splits():
    return load_data(TINY_DATA)


def _tiny_model(n):
    torch.manual_seed(0)
    return SignTransformer(num_classes=n, d_model=24, nhead=2, num_layers=1, dim_feedforward=48)


def test_fit_logs_per_epoch_metrics_params_and_confusion_matrix(tiny_splits, tmp_path):
    cfg = TrainingConfig(num_epochs=3, progress=False, mlflow_run_name="tiny-run", mlflow_tags={"who": "test"})
    trainer = SignTrainer(_tiny_model(len(tiny_splits.class_names)), cfg, class_names=tiny_splits.class_names,
                          metadata={"preset": "tiny"})
    res = trainer.fit(tiny_splits.train, tiny_splits.val)
    assert res["epochs_run"] == 3 and 0.0 <= res["val_accuracy"] <= 1.0 and res["run_id"]
    client = MlflowClient()
    run = client.get_run(res["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["who"] == "test" and run.info.run_name == "tiny-run"
    assert run.data.params["train.num_epochs"] == "3" and run.data.params["preset"] == "tiny"
    for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
        assert [m.step for m in client.get_metric_history(res["run_id"], key)] == [0, 1, 2]
    assert "val_macro_f1" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(res["run_id"])}
    assert {"confusion_matrix.json", "confusion_matrix.png"} <= arts
    lr = [m.value for m in client.get_metric_history(res["run_id"], "lr")]
    assert lr[-1] < lr[0]  # cosine decay
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "signflow-training"


def test_training_learns_on_easy_data(tiny_splits):
    # 32 training clips: batches of 8 give 48 optimizer steps (batches of 32 gave 12, too few to be reliable)
    trainer = SignTrainer(_tiny_model(len(tiny_splits.class_names)),
                          TrainingConfig(num_epochs=12, batch_size=8, progress=False, use_mlflow=False),
                          tiny_splits.class_names)
    before = trainer.evaluate(tiny_splits.train)["loss"]
    trainer.fit(tiny_splits.train, tiny_splits.val)
    after = trainer.evaluate(tiny_splits.train)
    assert after["loss"] < before * 0.7 and after["top1"] > 0.5


def test_unreachable_tracking_server_warns_once_and_trains_on(tiny_splits, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    trainer = SignTrainer(_tiny_model(len(tiny_splits.class_names)),
                          TrainingConfig(num_epochs=2, progress=False), tiny_splits.class_names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = trainer.fit(tiny_splits.train, tiny_splits.val)
    tracking = [w for w in caught if "MLflow tracking off" in str(w.message)]
    assert len(tracking) == 1 and "unreachable" in str(tracking[0].message)
    assert res["epochs_run"] == 2 and res["run_id"] is None


def test_training_without_mlflow_importable(tiny_splits, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *a, **k):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    trainer = SignTrainer(_tiny_model(len(tiny_splits.class_names)), TrainingConfig(num_epochs=1, progress=False),
                          tiny_splits.class_names)
    with pytest.warns(RuntimeWarning, match="mlflow is not importable"):
        res = trainer.fit(tiny_splits.train, tiny_splits.val)
    assert res["epochs_run"] == 1


def test_save_model_round_trips_with_labels(tiny_splits, tmp_path):
    trainer = SignTrainer(_tiny_model(len(tiny_splits.class_names)),
                          TrainingConfig(num_epochs=1, progress=False, use_mlflow=False), tiny_splits.class_names,
                          metadata={"preset": "tiny"})
    trainer.fit(tiny_splits.train, tiny_splits.val)
    path = trainer.save_model(tmp_path / "m.pt")
    model, meta = load_checkpoint(path)
    assert meta["labels"] == list(tiny_splits.class_names) and meta["preset"] == "tiny"
    assert meta["training"]["num_epochs"] == 1
    x = torch.from_numpy(tiny_splits.test.features[:4])
    with torch.no_grad():
        assert torch.allclose(model(x), trainer.model.eval()(x))


def test_early_stopping(tiny_splits):
    cfg = TrainingConfig(num_epochs=30, early_stopping_patience=1, learning_rate=1e-12, progress=False,
                         use_mlflow=False, augment=False)
    trainer = SignTrainer(_tiny_model(len(tiny_splits.class_names)), cfg, tiny_splits.class_names)
    res = trainer.fit(tiny_splits.train, tiny_splits.val)
    assert res["epochs_run"] == 2  # lr ~0: no improvement after the first epoch


def test_mirror_is_an_involution_and_augment_keeps_missing_points_zero(tiny_splits):
    assert np.array_equal(_MIRROR.numpy()[_MIRROR.numpy()], np.arange(FEATURE_DIM))
    x = torch.from_numpy(tiny_splits.train.features[:16].copy())
    m = torch.from_numpy(tiny_splits.train.mask[:16].copy())
    zero = (x == 0)
    ax, am = augment_batch(x, m, np.random.default_rng(0), p_mirror=0.0, max_shift=0, p_speed=0.0,
                           frame_drop=0.0, p_cutout=0.0)
    coords = slice(0, 225)
    assert torch.all(ax[:, :, coords][zero[:, :, coords]] == 0)
    assert am.any(1).all() and ax.shape == x.shape
    assert not torch.allclose(ax, x)


def test_cache_key_ignores_logging_options():
    a = TrainingConfig(use_mlflow=False, progress=False, mlflow_run_name="x").cache_key()
    b = TrainingConfig().cache_key()
    assert a == b and json.dumps(a)
    assert TrainingConfig(learning_rate=0.1).cache_key() != b


# -- settings are validated --------------------------------------------------------------------------
BAD_SETTINGS = [
    ("learning_rate", 0.0, "(0, 1]"), ("learning_rate", -1e-3, "(0, 1]"), ("learning_rate", 5.0, "(0, 1]"),
    ("learning_rate", float("nan"), "finite"), ("learning_rate", float("inf"), "finite"),
    ("batch_size", 0, "[1, 4096]"), ("batch_size", 10_000, "[1, 4096]"), ("batch_size", 3.5, "integer"),
    ("num_epochs", 0, "[1, 10000]"), ("num_epochs", 10**6, "[1, 10000]"),
    ("ema_decay", 1.0, "(0, 1)"), ("ema_decay", 0.0, "(0, 1)"),
    ("label_smoothing", 1.0, "[0, 1)"), ("weight_decay", -0.1, "[0, 1]"), ("warmup_fraction", 1.5, "[0, 1]"),
    ("grad_clip", -1.0, "[0, 1e+06]"), ("early_stopping_patience", 0, "[1, 10000]"), ("seed", -1, "integer"),
    ("num_threads", 0, "[1, 1024]"), ("amp", "fp8", "'auto', 'bf16' or 'off'"), ("device", "tpu", "'cuda:N'"),
]


@pytest.mark.parametrize("name,value,words", BAD_SETTINGS, ids=[f"{n}={v}" for n, v, _ in BAD_SETTINGS])
def test_validate_names_the_setting_its_value_and_range(name, value, words):
    with pytest.raises(TrainingConfigError) as err:
        TrainingConfig(**{name: value}).validate()
    msg = str(err.value)
    assert f"{name}={value!r}" in msg and words in msg


def test_defaults_and_edges_are_valid():
    assert TrainingConfig().validate() == TrainingConfig()
    TrainingConfig(learning_rate=1.0, batch_size=4096, num_epochs=1, ema_decay=0.999, grad_clip=0.0,
                   device="cuda:1", num_threads=None).validate()


def test_fit_validates_before_training(tiny_splits):
    trainer = SignTrainer(_tiny_model(len(tiny_splits.class_names)),
                          TrainingConfig(batch_size=0, progress=False, use_mlflow=False), tiny_splits.class_names)
    with pytest.raises(TrainingConfigError, match="batch_size=0"):
        trainer.fit(tiny_splits.train, tiny_splits.val)
    assert trainer.history == []


# -- diverging training stops, and nothing is saved ----------------------------------------------
def _nan_splits(splits):
    feats = splits.train.features.copy()
    feats[:, 5, 100] = np.nan  # e.g. a broken feature extractor
    return dataclasses.replace(splits, train=dataclasses.replace(splits.train, features=feats))


def test_nan_features_stop_training_naming_epoch_step_and_cause(tiny_splits):
    trainer = SignTrainer(_tiny_model(len(tiny_splits.class_names)),
                          TrainingConfig(num_epochs=2, progress=False, use_mlflow=False), tiny_splits.class_names)
    with pytest.raises(TrainingDivergedError) as err:
        trainer.fit(_nan_splits(tiny_splits).train, tiny_splits.val)
    msg = str(err.value)
    assert "epoch 1, step 1" in msg and "input features contain NaN or inf" in msg and "\n" not in msg
    assert (err.value.epoch, err.value.step) == (1, 1)
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())  # stopped before the step


def test_blown_up_weights_stop_training_and_blame_the_learning_rate(tiny_splits, tmp_path):
    model = _tiny_model(len(tiny_splits.class_names))
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("inf")  # what an exploding update leaves behind
    trainer = SignTrainer(model, TrainingConfig(num_epochs=1, learning_rate=0.5, progress=False, use_mlflow=False),
                          tiny_splits.class_names)
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 1: .*learning rate 0\.5 is probably too high"):
        trainer.fit(tiny_splits.train, tiny_splits.val)
    with pytest.raises(Exception, match="NaN or inf"):
        trainer.save_model(tmp_path / "diverged.pt")
    assert not any(tmp_path.iterdir())


def test_cli_train_that_diverges_exits_2_and_writes_no_checkpoint(tiny_zoo_file, monkeypatch, capsys, tmp_path,
                                                                   isolated_home):
    import signflow_zoo.data.loading as data_mod
    from signflow_zoo.cli.commands import main

    real = data_mod.load_data
    monkeypatch.setattr(data_mod, "load_data", lambda *a, **k: _nan_splits(real(*a, **k)))
    out = tmp_path / "model.pt"
    code = main(["--zoo", str(tiny_zoo_file), "train", "--preset", "tiny", "--data", TINY_DATA, "--no-track",
                 "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "training diverged at epoch 1, step 1" in err
    assert not out.exists() and not list(isolated_home.rglob("*.pt"))


# -- calibration after training ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrated(tiny_splits, tmp_path_factory):
    trainer = SignTrainer(_tiny_model(len(tiny_splits.class_names)),
                          TrainingConfig(num_epochs=4, progress=False, use_mlflow=False), tiny_splits.class_names,
                          metadata={"preset": "tiny"})
    res = trainer.fit(tiny_splits.train, tiny_splits.val)
    return trainer, res, trainer.save_model(tmp_path_factory.mktemp("cal") / "m.pt")


def test_fit_calibrates_on_validation_logits(calibrated, tiny_splits):
    trainer, res, _ = calibrated
    t = res["temperature"]
    assert 0.5 <= t <= 10 and 0.0 <= res["ece_after"] <= 1.0 and 0.0 <= res["ece_before"] <= 1.0
    logits = trainer.predict_logits(tiny_splits.val)
    labels = tiny_splits.val.labels
    cal = trainer.calibration
    fit, held, _ = holdout_split(labels, tiny_splits.val.signers)
    assert (cal["fit_size"], cal["eval_size"]) == (len(fit), len(held)) and len(held) > 0
    # the fitted temperature is the NLL minimum of the fit part; it is served only when it helps the held-out part
    f = cal["fitted_temperature"]
    assert nll(logits[fit], labels[fit], f) <= min(nll(logits[fit], labels[fit], x)
                                                   for x in (0.5, 0.8 * f, 1.0, 1.25 * f, 10.0)) + 1e-9
    kept = nll(logits[held], labels[held], f) < nll(logits[held], labels[held])
    assert cal["temperature_kept"] is kept and t == (f if kept else 1.0)
    assert res["nll_after"] <= res["nll_before"] and cal["temperature"] == t


def test_calibration_travels_checkpoint_to_onnx_metadata(calibrated, tmp_path):
    from signflow_zoo.model.export import serving_metadata
    from signflow_zoo.model.export import export_to_onnx, read_metadata

    trainer, res, path = calibrated
    _, meta = read_checkpoint(path)
    cal = meta["calibration"]
    assert cal["temperature"] == res["temperature"] and cal["ece_before"] == res["ece_before"]
    assert cal["bins"] == 15 and cal["fitted_on"] == "validation" and cal["method"]
    assert len(cal["class_thresholds"]) == len(meta["labels"])
    export_to_onnx(load_checkpoint(path)[0], tmp_path / "m.onnx", metadata=serving_metadata(meta),
                   exporter="legacy", verify=False)
    onnx_meta = read_metadata(tmp_path / "m.onnx")
    assert onnx_meta["calibration_temperature"] == cal["temperature"]
    assert isinstance(onnx_meta["calibration_temperature"], float)
    assert onnx_meta["class_thresholds"] == cal["class_thresholds"]
    assert onnx_meta["calibration"] == cal and onnx_meta["labels"] == meta["labels"]


def test_serving_metadata_without_calibration_is_neutral():
    from signflow_zoo.model.export import serving_metadata

    sm = serving_metadata({"model_kwargs": {"num_classes": 3}})
    assert sm["calibration_temperature"] == 1.0 and sm["class_thresholds"] == [] and sm["calibration"] == {}


def test_cli_train_prints_ece_before_and_after(tiny_zoo_file, capsys, tmp_path):
    from signflow_zoo.cli.commands import main

    out = tmp_path / "m.pt"
    assert main(["--zoo", str(tiny_zoo_file), "train", "--preset", "tiny", "--data", TINY_DATA, "--no-track",
                 "--epochs", "1", "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    _, meta = read_checkpoint(out)
    assert printed["ece_before"] == round(meta["calibration"]["ece_before"], 4)
    assert printed["ece_after"] == round(meta["calibration"]["ece_after"], 4)
    assert printed["temperature"] == round(meta["calibration"]["temperature"], 4)
