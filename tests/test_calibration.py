"""Temperature scaling, expected calibration error and per-class thresholds (signflow_zoo.model.calibration)."""

import json
import math

import numpy as np
import pytest

from signflow_zoo.model.calibration import (
    TEMPERATURE_BOUNDS,
    expected_calibration_error,
    fit_calibration,
    fit_class_thresholds,
    fit_temperature,
    nll,
    softmax,
)


@pytest.fixture(scope="module")
def honest():
    """Logits whose softmax is the true label distribution (labels drawn from it): T = 1 is right."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6000, 8)) * 2.0
    probs = softmax(logits)
    labels = (probs.cumsum(1) > rng.random((len(probs), 1))).argmax(1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.7, 1.0, 2.5, 6.0])
def test_fit_temperature_recovers_a_known_temperature(honest, true_t):
    logits, labels = honest
    assert fit_temperature(logits * true_t, labels) == pytest.approx(true_t, rel=0.06)


def test_temperature_lowers_nll_and_ece_of_over_confident_logits(honest):
    logits, labels = honest
    over = logits * 3.0  # deliberately over-confident
    t = fit_temperature(over, labels)
    assert t > 2.0
    assert nll(over, labels, t) < 0.8 * nll(over, labels)
    for other in (0.5 * t, 0.9 * t, 1.1 * t, 2 * t):  # a minimum, not just an improvement
        assert nll(over, labels, t) <= nll(over, labels, other)
    assert expected_calibration_error(softmax(over, t), labels) < 0.5 * expected_calibration_error(softmax(over), labels)


def test_temperature_stays_within_its_bounds():
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])
    assert fit_temperature(logits, np.array([0, 1])) == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3)  # all right
    assert fit_temperature(logits, np.array([1, 0])) == pytest.approx(TEMPERATURE_BOUNDS[1], rel=1e-3)  # all wrong
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, int)) == 1.0


def test_ece_of_a_small_example_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.38, 0.62], [0.05, 0.95]])
    labels = np.array([0, 1, 1, 1])
    # bins of width 1/15: 0.9 -> [13/15, 14/15) holds two samples, one right: |0.5 - 0.9| * 2/4 = 0.2
    # 0.62 -> [9/15, 10/15): |1 - 0.62| * 1/4 = 0.095;  0.95 -> [14/15, 1]: |1 - 0.95| * 1/4 = 0.0125
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3075)
    # with 2 bins, 0.62, 0.9, 0.9 and 0.95 share [0.5, 1]: |0.75 - 0.8425| = 0.0925
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(0.0925)


def test_ece_edges_and_perfect_calibration():
    # confidence exactly 1.0 falls into the last bin, not past it
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(1.0)
    # half of the 0.5-confident predictions are right: calibrated
    probs = np.array([[0.5, 0.5]] * 4)
    assert expected_calibration_error(probs, np.array([0, 1, 0, 1])) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)))


def test_class_thresholds_maximise_one_vs_rest_f1_with_the_originals_grid():
    probs = np.array([[0.6, 0.3, 0.1],
                      [0.7, 0.2, 0.1],
                      [0.5, 0.45, 0.05],
                      [0.2, 0.8, 0.0]])
    labels = np.array([0, 0, 1, 1])
    th = fit_class_thresholds(probs, labels)
    # class 0: positives at 0.6, 0.7, negatives up to 0.5 -> F1 = 1 for thresholds in (0.5, 0.6]; lowest: 0.55
    # class 1: positives at 0.45, 0.8, negatives up to 0.3 -> (0.3, 0.45]; lowest: 0.35
    # class 2: never seen in validation -> 0.75
    assert th == pytest.approx([0.55, 0.35, 0.75])


def test_class_thresholds_trade_f1_against_errors():
    # one positive at 0.9 and one at 0.3 among negatives at 0.4, 0.5: catching both costs two false positives
    probs1 = np.array([0.9, 0.3, 0.4, 0.5])
    probs = np.stack([1 - probs1, probs1], 1)
    labels = np.array([1, 1, 0, 0])
    # >= 0.55: tp 1, fn 1 -> F1 2/3, score 2/3 - 0.02 * 1/4; >= 0.3: tp 2, fp 2 -> F1 2/3, score lower
    assert fit_class_thresholds(probs, labels)[1] == pytest.approx(0.55)


def test_fit_calibration_is_the_checkpoint_record(honest):
    logits, labels = honest
    cal = fit_calibration(logits * 2.0, labels)
    assert set(cal) == {"temperature", "class_thresholds", "ece_before", "ece_after", "nll_before", "nll_after",
                        "fitted_temperature", "temperature_kept", "temperature_reason", "split", "split_seed",
                        "fit_size", "eval_size", "bins", "fitted_on", "method"}
    assert cal["bins"] == 15 and cal["fitted_on"] == "validation" and "NLL" in cal["method"]
    # fitted on half of the set, ECE measured on the other half (tests/test_fidelity_calibration.py)
    assert cal["fit_size"] + cal["eval_size"] == len(labels) and cal["split"] == "seeded-half"
    assert cal["temperature"] == pytest.approx(2.0, rel=0.08) and cal["ece_after"] < cal["ece_before"]
    assert len(cal["class_thresholds"]) == 8 and all(0.25 <= v <= 0.95 for v in cal["class_thresholds"])
    assert json.loads(json.dumps(cal)) == cal  # plain JSON: goes into checkpoint and ONNX metadata as is
    assert fit_calibration(np.zeros((0, 8)), np.zeros(0, int)) is None
