import json
import warnings

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import TINY_DATA
from signflow_zoo.augment import _MIRROR, augment_batch
from signflow_zoo.checkpoint import load_checkpoint
from signflow_zoo.data import load_data
from signflow_zoo.model import SignTransformer
from signflow_zoo.training import SignTrainer, TrainingConfig


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
    trainer = SignTrainer(_tiny_model(len(tiny_splits.class_names)),
                          TrainingConfig(num_epochs=12, progress=False, use_mlflow=False), tiny_splits.class_names)
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
    cfg = TrainingConfig(num_epochs=30, early_stopping_patience=1, learning_rate=0.0, progress=False, use_mlflow=False,
                         augment=False)
    trainer = SignTrainer(_tiny_model(len(tiny_splits.class_names)), cfg, tiny_splits.class_names)
    res = trainer.fit(tiny_splits.train, tiny_splits.val)
    assert res["epochs_run"] == 2  # lr 0: no improvement after the first epoch


def test_mirror_is_an_involution_and_augment_keeps_missing_points_zero(tiny_splits):
    assert np.array_equal(_MIRROR.numpy()[_MIRROR.numpy()], np.arange(469))
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
