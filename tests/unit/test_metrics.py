import numpy as np
import pytest

from pipeline.temperature import calibrated_softmax
from training.metrics import confusion_matrix, fit_temperature, macro_f1, per_class_prf, reliability


def test_confusion_and_f1_on_hand_made_predictions():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    precision, recall, f1, support = per_class_prf(cm)
    assert precision.tolist() == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert recall.tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert f1[1] == pytest.approx(0.8)
    assert macro_f1(cm) == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)


def test_ece_zero_when_confidence_equals_accuracy_and_large_when_overconfident():
    probs = np.array([[0.75, 0.25]] * 4)
    ece, _ = reliability(probs, np.array([0, 0, 0, 1]))
    assert ece == pytest.approx(0.0)
    ece, bins = reliability(np.array([[0.99, 0.01]] * 4), np.array([0, 1, 1, 1]))
    assert ece == pytest.approx(0.99 - 0.25)
    assert sum(b["count"] for b in bins) == 4


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_t = 2.5
    logits = rng.normal(0, 4, size=(4000, 5))
    probs = calibrated_softmax(logits, true_t)
    labels = np.array([rng.choice(5, p=p / p.sum()) for p in probs.astype(np.float64)])
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.1)
