"""Calibration fidelity (issue 20, items 2 and 3).

* The ``.pt`` and the ``.onnx`` of one training run serve with the same calibration, so a replayed stream gets
  the same decisions from either file, whichever export path wrote the ``.onnx`` (``export_to_onnx(...,
  calibration=)``, ``export_to_onnx(trainer)``, ``signflow-zoo export``).
* The temperature is fitted on one part of the validation set and checked on the other: ECE and NLL are
  held-out numbers, and a temperature that makes the held-out NLL worse is not kept. The held-out ECE reaches
  the bench record, its MLflow metrics and ``report``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import TINY_DATA
from signflow_zoo.model.calibration import (expected_calibration_error, fit_calibration, fit_temperature, holdout_split,
                                            nll, softmax)


def _honest(n=4000, classes=6, seed=0):
    """Logits whose softmax is the true label distribution, labels drawn from it: T = 1 is right."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 2.0
    probs = softmax(logits)
    labels = (probs.cumsum(1) > rng.random((n, 1))).argmax(1)
    return logits, labels


# -- the split -------------------------------------------------------------------------------------------------
def test_the_split_is_disjoint_covers_the_set_and_keeps_signers_apart():
    labels = np.repeat(np.arange(4), 6)  # 24 clips: 4 classes x 6
    signers = [f"s{i % 5}" for i in range(24)]
    fit, held, how = holdout_split(labels, signers)
    assert how == "signer" and len(fit) and len(held)
    assert not set(fit) & set(held) and sorted([*fit, *held]) == list(range(24))
    assert not {signers[i] for i in fit} & {signers[i] for i in held}  # no signer in both parts
    assert abs(len(fit) - len(held)) <= 5  # signers of about 5 clips each, balanced by clip count
    assert [a.tolist() for a in holdout_split(labels, signers)[:2]] == [fit.tolist(), held.tolist()]  # fixed seed

    # one signer (or none recorded): a fixed seeded half, stratified by class
    for who in (["only"] * 24, None):
        fit, held, how = holdout_split(labels, who)
        assert how == "seeded-half" and not set(fit) & set(held) and sorted([*fit, *held]) == list(range(24))
        assert len(fit) == len(held) == 12
        for c in range(4):
            assert (labels[fit] == c).sum() == (labels[held] == c).sum() == 3
    assert holdout_split(labels, None, seed=0)[0].tolist() == holdout_split(labels, None)[0].tolist()
    assert holdout_split(labels, None, seed=1)[0].tolist() != holdout_split(labels, None)[0].tolist()
    fit, held, _ = holdout_split(np.array([2]))
    assert fit.tolist() == [0] and held.tolist() == []


def test_the_split_of_real_validation_data_and_the_record_it_leaves():
    from signflow_zoo.data.loading import load_data

    val = load_data("synthetic:classes=4,signers=12,clips=2,seed=1").val
    fit, held, how = holdout_split(val.labels, val.signers)
    assert how == ("signer" if len(set(val.signers)) >= 2 else "seeded-half")
    assert not set(fit) & set(held) and len(fit) + len(held) == len(val)
    if how == "signer":
        assert not {val.signers[i] for i in fit} & {val.signers[i] for i in held}
    logits = np.random.default_rng(3).normal(size=(len(val), 4))
    cal = fit_calibration(logits, val.labels, val.signers)
    assert (cal["fit_size"], cal["eval_size"], cal["split"]) == (len(fit), len(held), how)
    # the ECE and NLL are those of the held-out part at temperature 1 and at the served temperature
    lh, yh = logits[held], val.labels[held]
    assert cal["ece_before"] == pytest.approx(expected_calibration_error(softmax(lh), yh))
    assert cal["ece_after"] == pytest.approx(expected_calibration_error(softmax(lh, cal["temperature"]), yh))
    assert cal["nll_before"] == pytest.approx(nll(lh, yh)) and cal["nll_after"] == pytest.approx(
        nll(lh, yh, cal["temperature"]))
    assert json.loads(json.dumps(cal)) == cal


# -- keeping a temperature -------------------------------------------------------------------------------------
def test_a_temperature_that_worsens_the_held_out_nll_is_not_kept():
    logits, labels = _honest()
    signers = ["a"] * 2000 + ["b"] * 2000
    fit, held, _ = holdout_split(labels, signers)
    skewed = logits.copy()
    skewed[fit] *= 3.0  # the fit part is over-confident: it asks for T ~ 3 ...
    skewed[held] *= 0.7  # ... the held-out part is under-confident: any T > 1 makes it worse
    assert fit_temperature(skewed[fit], labels[fit]) > 2.0
    cal = fit_calibration(skewed, labels, signers)
    assert cal["fitted_temperature"] > 2.0 and cal["temperature_kept"] is False and cal["temperature"] == 1.0
    assert "does not lower the NLL" in cal["temperature_reason"] and "1.0 is kept" in cal["temperature_reason"]
    assert nll(skewed[held], labels[held], cal["fitted_temperature"]) > cal["nll_before"]  # it would have hurt
    assert cal["nll_after"] == cal["nll_before"] and cal["ece_after"] == cal["ece_before"]
    # the thresholds are learned at the temperature that is served
    from signflow_zoo.model.calibration import fit_class_thresholds

    assert cal["class_thresholds"] == fit_class_thresholds(softmax(skewed[fit]), labels[fit], 6)


def test_a_temperature_that_helps_the_held_out_part_is_kept():
    logits, labels = _honest()
    over = logits * 3.0  # over-confident everywhere
    cal = fit_calibration(over, labels)
    assert cal["split"] == "seeded-half" and cal["fit_size"] == cal["eval_size"] == 2000
    assert cal["temperature_kept"] is True and cal["temperature"] == cal["fitted_temperature"]
    assert cal["temperature"] == pytest.approx(3.0, rel=0.1)
    assert cal["nll_after"] < cal["nll_before"] and cal["ece_after"] < 0.5 * cal["ece_before"]
    assert "lowers the NLL" in cal["temperature_reason"]


def test_a_one_clip_validation_set_keeps_no_temperature_and_reports_no_ece():
    cal = fit_calibration(np.array([[3.0, 0.0]]), np.array([0]))
    assert cal["temperature"] == 1.0 and cal["temperature_kept"] is False and cal["eval_size"] == 0
    assert cal["ece_before"] is None and cal["ece_after"] is None and "too small" in cal["temperature_reason"]


# -- .pt and .onnx of one training run -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One training run: the trainer, its .pt, and the test signers' raw clips."""
    import torch

    from signflow_zoo.data.loading import load_data
    from signflow_zoo.data.synthetic import SyntheticSpec, generate
    from signflow_zoo.model.network import SignTransformer
    from signflow_zoo.model.training import SignTrainer, TrainingConfig

    splits = load_data(TINY_DATA)
    torch.manual_seed(0)
    model = SignTransformer(num_classes=len(splits.class_names), d_model=24, nhead=2, num_layers=1, dim_feedforward=48)
    trainer = SignTrainer(model, TrainingConfig(num_epochs=12, batch_size=8, progress=False, use_mlflow=False),
                          splits.class_names, metadata={"preset": "tiny"})
    trainer.fit(splits.train, splits.val)
    folder = tmp_path_factory.mktemp("fidelity")
    pt = trainer.save_model(folder / "run.pt")
    clips, names = generate(SyntheticSpec(num_classes=4, num_signers=6, clips_per_signer_per_class=2, seed=1))
    assert names == splits.class_names
    test_signers = set(splits.test.signers)
    return trainer, pt, [c for c in clips if c.signer in test_signers], folder


def _pipeline(path):
    """A pipeline on ``path``; a base threshold of 0.4 (not 0.7) so that the tiny model accepts some signs and the
    class thresholds (0.25..0.95) take part in the decisions."""
    from signflow_zoo.serve.pipeline import PipelineConfig, SignFlowInferencePipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return SignFlowInferencePipeline(model_path=path, config=PipelineConfig(confidence_threshold=0.4))


def _decisions(path, clips):
    """What a pipeline on ``path`` decides: its calibration, each clip classified alone, and a replayed stream."""
    from signflow_zoo.serve.replay import replay_stream

    pipe = _pipeline(path)
    per_clip = []
    for clip in clips:
        p = pipe.process_sequence(clip.raw)
        per_clip.append((p.label, p.accepted, p.candidate, p.threshold, p.class_threshold, round(p.confidence, 4)))
    ended: list[tuple] = []
    summary = replay_stream(pipe, clips, on_prediction=lambda p, i: ended.append(
        (i, p.label, p.accepted, p.candidate, p.class_threshold)))
    return {"temperature": pipe.temperature, "class_thresholds": pipe.class_thresholds, "clips": per_clip,
            "stream": ended, "sentence": summary["sentence"], "accepted": summary["accepted"],
            "clips_accepted": sum(c[1] for c in per_clip)}


@pytest.mark.slow
def test_the_pt_and_the_onnx_of_one_training_run_make_the_same_decisions(run):
    from signflow_zoo.model.export import export_checkpoint, export_to_onnx, read_metadata

    trainer, pt, clips, folder = run
    cal = trainer.calibration
    assert cal and cal["eval_size"] > 0 and len(cal["class_thresholds"]) == 4
    # the README's flow, with the calibration passed; the trainer itself; the CLI's path
    export_to_onnx(trainer.model, folder / "readme.onnx", labels=trainer.class_names, calibration=cal,
                   exporter="legacy", verify=False)
    export_to_onnx(trainer, folder / "trainer.onnx", exporter="legacy", verify=False)
    export_checkpoint(pt, folder / "cli.onnx", exporter="legacy")
    for name in ("readme", "trainer", "cli"):
        meta = read_metadata(folder / f"{name}.onnx")
        assert meta["calibration_temperature"] == cal["temperature"], name
        assert meta["class_thresholds"] == cal["class_thresholds"] and meta["calibration"] == cal, name
        assert meta["labels"] == trainer.class_names, name

    want = _decisions(pt, clips)
    assert want["temperature"] == cal["temperature"] and want["class_thresholds"] == cal["class_thresholds"]
    assert len(want["clips"]) == len(clips) >= 8 and want["stream"] and want["clips_accepted"] >= 1
    for name in ("readme", "trainer", "cli"):
        got = _decisions(folder / f"{name}.onnx", clips)
        assert got == want, name

    # the old flow (no calibration) serves temperature 1.0 and no class thresholds: other decisions
    export_to_onnx(trainer.model, folder / "bare.onnx", labels=trainer.class_names, exporter="legacy", verify=False)
    bare = _decisions(folder / "bare.onnx", clips)
    assert bare["temperature"] == 1.0 and bare["class_thresholds"] is None and bare != want


def test_export_to_onnx_refuses_a_bad_or_conflicting_calibration(tmp_path):
    from signflow_zoo.model.export import export_to_onnx, serving_metadata
    from signflow_zoo.model.network import SignTransformer
    from signflow_zoo.model.training import SignTrainer

    model = SignTransformer(num_classes=4, d_model=24, nhead=2, num_layers=1, dim_feedforward=48)
    trainer = SignTrainer(model, class_names=list("abcd"))
    trainer.calibration = fit_calibration(*_honest(200, classes=4))
    with pytest.raises(ValueError, match="class_thresholds must be null or 4 numbers"):
        export_to_onnx(trainer.model, tmp_path / "x.onnx", calibration={"temperature": 2.0, "class_thresholds": [0.5]},
                       exporter="legacy", verify=False)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        export_to_onnx(trainer.model, tmp_path / "x.onnx", calibration={"temperature": 0}, exporter="legacy",
                       verify=False)
    other = serving_metadata({"model_kwargs": {"num_classes": 4}, "labels": trainer.class_names,
                              "calibration": {**trainer.calibration, "temperature": 9.5}})
    with pytest.raises(ValueError, match="calibration= and metadata"):
        export_to_onnx(trainer.model, tmp_path / "x.onnx", metadata=other, calibration=trainer.calibration,
                       exporter="legacy", verify=False)
    with pytest.raises(TypeError, match="torch.nn.Module or a SignTrainer"):
        export_to_onnx(object(), tmp_path / "x.onnx")  # type: ignore[arg-type]
    assert not (tmp_path / "x.onnx").exists()


# -- held-out ECE in the record, MLflow and report ------------------------------------------------------------
def test_flat_records_carry_the_held_out_calibration_as_metrics():
    from signflow_zoo.results.files import flatten, split_flat

    cal = fit_calibration(*_honest(400))
    rec = {"result_id": "r", "preset": "tiny", "backend": "torch-eager", "status": "ok", "calibration": cal}
    params, metrics = split_flat(flatten(rec, {"records": [rec]}))
    for k in ("ece_before", "ece_after", "nll_before", "nll_after", "temperature", "fitted_temperature", "fit_size",
              "eval_size"):
        assert metrics[f"calibration_{k}"] == pytest.approx(float(cal[k])), k
    assert metrics["calibration_temperature_kept"] == float(cal["temperature_kept"])
    assert not any(k.startswith("calibration") for k in params)


@pytest.mark.slow
def test_held_out_ece_reaches_the_record_mlflow_and_report(tiny_zoo_file, tmp_path, capsys, warm_home):
    from mlflow.tracking import MlflowClient

    from signflow_zoo import report
    from signflow_zoo.cli.commands import main
    from signflow_zoo.model.checkpoint import read_checkpoint

    out = tmp_path / "result.json"
    assert main(["--zoo", str(tiny_zoo_file), "bench", "--preset", "tiny", "--data", TINY_DATA, "--quick",
                 "--min-time", "0.05", "--exporter", "legacy", "--no-progress", "--no-stream", "--no-train",
                 "--backends", "torch-eager,onnx-cpu", "--json", str(out)]) == 0
    capsys.readouterr()
    doc = json.loads(out.read_text())
    assert doc["tracking"]["uploaded"] is True
    ckpt = next(warm_home.rglob("*.pt"))
    cal = read_checkpoint(ckpt)[1]["calibration"]
    assert cal["eval_size"] > 0 and cal["fit_size"] > 0 and cal["ece_after"] is not None
    recs = {r["backend"]: r for r in doc["records"]}
    for r in recs.values():  # the record: the checkpoint's held-out calibration, and the training result's copy
        assert r["calibration"] == cal
        assert r["training"]["ece_after"] == cal["ece_after"] and r["training"]["nll_after"] == cal["nll_after"]

    # MLflow: the flat keys are metrics of each record's run
    client = MlflowClient()
    exp = client.get_experiment_by_name("signflow-zoo")
    runs = client.search_runs([exp.experiment_id], "tags.`signflow_zoo.kind` = 'bench-record'")
    assert {r.data.tags["backend"] for r in runs} == set(recs)
    for r in runs:
        m = r.data.metrics
        assert m["calibration_ece_after"] == pytest.approx(cal["ece_after"])
        assert m["calibration_ece_before"] == pytest.approx(cal["ece_before"])
        assert m["calibration_nll_after"] == pytest.approx(cal["nll_after"])
        assert m["calibration_eval_size"] == cal["eval_size"] and m["calibration_fit_size"] == cal["fit_size"]

    # report, from the store: json and csv hold the numbers, --wide and the default table show them
    assert main(["report", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["backend"] for r in rows} == set(recs)
    for row in rows:
        assert row["calibration_ece_after"] == pytest.approx(cal["ece_after"])
        assert row["calibration_ece_before"] == pytest.approx(cal["ece_before"])
        assert row["calibration_eval_size"] == cal["eval_size"]
    assert main(["report", "--wide"]) == 0
    wide = capsys.readouterr().out
    assert "ECE" in [h.strip() for h in wide.splitlines()[0].split("  ") if h.strip()]
    assert f"{cal['ece_before']:.3f} -> {cal['ece_after']:.3f}" in wide and "held-out part" in " ".join(wide.split())
    assert main(["report"]) == 0
    narrow = capsys.readouterr().out
    assert max(len(line) for line in narrow.splitlines()) <= report.TERMINAL_WIDTH
    header = [h.strip() for h in narrow.splitlines()[0].split("  ") if h.strip()]
    assert header == ["preset", "batch", "backend", "p50 ms", "vs eager", "top-1", "worst signer", "ECE", "status"]
    assert f"{cal['ece_after']:.3f}" in narrow


def test_the_default_table_gives_the_ece_column_away_first_to_fit_120_columns():
    from signflow_zoo import report

    from test_report import realistic_records

    recs = [dict(r, calibration_ece_before=0.21, calibration_ece_after=0.0625, calibration_eval_size=40.0)
            for r in realistic_records()]
    wide = report.comparison_table(recs, wide=True)
    assert wide.splitlines()[0].split()[-1] == "ECE" and "0.210 -> 0.062" in wide
    # a checkpoint calibrated before ECE was held out (no eval_size) shows none
    old = [{k: v for k, v in r.items() if k != "calibration_eval_size"} for r in recs]
    assert "ECE" not in report.comparison_table(old, wide=True).splitlines()[0]
    text = report.comparison_table(recs)
    assert max(len(line) for line in text.splitlines()) <= report.TERMINAL_WIDTH
    header = [h.strip() for h in text.splitlines()[0].split("  ") if h.strip()]
    if "ECE" in header:
        assert "0.062" in text and "held-out part" in " ".join(text.split())
    else:
        assert "not shown, to fit 120 columns: ECE" in " ".join(text.split())
    # several hosts and repeated runs need the room: ECE gives way before created
    there = [dict(r, host="lab-gpu-07", host_class="intel-f6m143-avx512bf16-amx-8cpu", invocation_id="inv-2")
             for r in recs]
    older = [dict(r, created="2026-11-01T09:00:00Z", invocation_id="inv-0") for r in recs[:16]]
    text = report.comparison_table(recs + there + older)
    assert max(len(line) for line in text.splitlines()) <= report.TERMINAL_WIDTH
    csv_text = report.comparison_table(recs, fmt="csv")
    assert "calibration_ece_after" in csv_text.splitlines()[0]
