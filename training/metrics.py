"""Classification metrics on arrays of labels and probabilities (NumPy only)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from pipeline.temperature import calibrated_softmax


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_prf(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (rows = truth)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, support


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the truth."""
    _, _, f1, support = per_class_prf(cm)
    present = support > 0
    return float(f1[present].mean()) if present.any() else 0.0


def reliability(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> tuple[float, list[dict]]:
    """Expected calibration error (top-label, equal-width bins) and the per-bin table."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (confidence > lo) & (confidence <= hi)
        if not mask.any():
            continue
        acc, conf = float(correct[mask].mean()), float(confidence[mask].mean())
        ece += mask.mean() * abs(acc - conf)
        table.append({"low": float(lo), "high": float(hi), "count": int(mask.sum()), "accuracy": acc, "confidence": conf})
    return float(ece), table


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float) -> float:
    p = calibrated_softmax(logits, temperature)[np.arange(len(y_true)), y_true]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature minimising validation negative log-likelihood (Guo et al., 2017)."""
    result = minimize_scalar(lambda t: nll(logits, y_true, t), bounds=(0.05, 20.0), method="bounded")
    return float(result.x)
