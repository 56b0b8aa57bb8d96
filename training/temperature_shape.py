"""Fitting and scoring a distance-aware temperature on collected logits and distances (no model needed).

Split from ``training.distance_temperature``, which collects the data (the
model over validation images and their shifts, the leave-one-laboratory-out
models) and writes the chosen rule into a manifest. Everything here works on
the dicts that ``collect`` returns (``logits``, ``distance``, ``y``,
``condition``, ``image`` per row; ``names``, ``keys``, ``lab`` for the set),
so the choice of rule can be re-run and tested without TensorFlow or LiteRT.
"""

from __future__ import annotations

import zlib

import numpy as np

from pipeline.temperature import DistanceTemperature, calibrated_softmax
from training.metrics import reliability

#: reference distances tried: these quantiles of the clean validation images' distances
REFERENCE_QUANTILES = (0.5, 0.75, 0.9, 0.95)
#: powers tried (0 = the constant temperature)
POWERS = np.round(np.arange(0.0, 6.01, 0.1), 2)
#: clean in-domain validation ECE the rule may not exceed (the project's in-domain target)
IN_DOMAIN_ECE_LIMIT = 0.03


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


def probabilities(logits: np.ndarray, distances: np.ndarray, base: float, rule: DistanceTemperature | None) -> np.ndarray:
    return calibrated_softmax(logits, base if rule is None else rule.temperatures(base, distances))


def ece_of(d: dict[str, np.ndarray], base: float, rule: DistanceTemperature | None) -> float:
    """ECE of the rows of ``d`` (logits, distance, y) at the base temperature or with ``rule``."""
    return reliability(probabilities(d["logits"], d["distance"], base, rule), d["y"])[0]


def ece_limit(clean: dict[str, np.ndarray], base: float) -> float:
    """The in-domain ECE a rule may reach on clean validation rows: 3 %, or the constant temperature's where higher."""
    return max(IN_DOMAIN_ECE_LIMIT, ece_of(clean, base, None))


def fit_rule(data: list[dict[str, np.ndarray]], base: float, mask: list[np.ndarray] | None = None) -> DistanceTemperature:
    """The (reference, power) with the lowest NLL over every row of ``data`` (one dict per laboratory) whose clean
    rows keep ECE <= 3 % in every laboratory (or, where the constant temperature already exceeds it, no worse).

    ``mask`` (optional, per laboratory) chooses the rows (images) to fit on, for held-out halves.
    """
    mask = mask or [np.ones(len(d["y"]), bool) for d in data]
    logits = np.concatenate([d["logits"][m] for d, m in zip(data, mask, strict=True)])
    distances = np.concatenate([d["distance"][m] for d, m in zip(data, mask, strict=True)])
    y = np.concatenate([d["y"][m] for d, m in zip(data, mask, strict=True)])
    clean = [rows_of(d, m & (d["condition"] == 0)) for d, m in zip(data, mask, strict=True)]
    limits = [ece_limit(c, base) for c in clean]
    pooled_clean = np.concatenate([c["distance"] for c in clean])
    best: tuple[float, DistanceTemperature] | None = None
    for q in REFERENCE_QUANTILES:
        reference = float(np.quantile(pooled_clean, q))
        for power in POWERS:
            rule = DistanceTemperature(round(reference, 4), float(power))
            if any(ece_of(c, base, rule) > lim for c, lim in zip(clean, limits, strict=True)):
                continue
            loss = nll(probabilities(logits, distances, base, rule), y)
            if best is None or loss < best[0] - 1e-9:
                best = (loss, rule)
    assert best is not None  # power 0 is the constant temperature, which always passes
    return best[1]


def score(d: dict[str, np.ndarray], base: float, rule: DistanceTemperature | None, rows: np.ndarray | None = None) -> dict:
    """ECE and NLL per condition (constant temperature when ``rule`` is None), and their means over shifted ones."""
    rows = np.ones(len(d["y"]), bool) if rows is None else rows
    per = {}
    for index, name in enumerate(d["names"]):
        sel = rows & (d["condition"] == index)
        if not sel.any():
            continue
        probs = probabilities(d["logits"][sel], d["distance"][sel], base, rule)
        per[str(name)] = {"ece": reliability(probs, d["y"][sel])[0], "nll": nll(probs, d["y"][sel]),
                          "accuracy": float((probs.argmax(axis=1) == d["y"][sel]).mean())}
    shifted = [v for k, v in per.items() if not k.startswith("baseline/")]
    return {"clean_ece": per["baseline/none"]["ece"], "clean_nll": per["baseline/none"]["nll"],
            "shifted_mean_ece": float(np.mean([v["ece"] for v in shifted])) if shifted else None,
            "shifted_worst_ece": float(np.max([v["ece"] for v in shifted])) if shifted else None,
            "shifted_mean_nll": float(np.mean([v["nll"] for v in shifted])) if shifted else None,
            "conditions": per}


def halves(d: dict[str, np.ndarray], which: int) -> np.ndarray:
    """Rows whose image falls in half ``which`` (by a hash of the image's file name, the same in every condition)."""
    parity = np.array([zlib.crc32(str(k).encode()) % 2 for k in d["keys"]])
    return parity[d["image"]] == which


def held_out_halves(data: list[dict[str, np.ndarray]], base: float) -> list[dict]:
    """Fit on one half of every laboratory's images (all conditions), score the other half; both ways round."""
    out = []
    for which in (0, 1):
        rule = fit_rule(data, base, [halves(d, which) for d in data])
        row = {"fit_on_half": which, "rule": rule.__dict__, "labs": {}}
        for d in data:
            other = halves(d, 1 - which)
            row["labs"][d["lab"]] = {"constant": brief(score(d, base, None, other)), "distance": brief(score(d, base, rule, other))}
        out.append(row)
    return out


def brief(s: dict) -> dict:
    return {k: v for k, v in s.items() if k != "conditions"}


def shaped_rule(data: list[dict[str, np.ndarray]], quantile: float, power: float) -> DistanceTemperature:
    """The rule of a shape chosen by leave-one-laboratory-out for a model trained on several laboratories:
    reference = the mean over laboratories of each one's ``quantile`` of clean validation distances (each
    laboratory weighs the same, whatever its number of validation images)."""
    reference = float(np.mean([np.quantile(d["distance"][d["condition"] == 0], quantile) for d in data]))
    return DistanceTemperature(round(reference, 4), float(power))


def lolo_rule(own_clean: dict[str, np.ndarray], quantile: float, power: float) -> DistanceTemperature:
    """A shape applied to one leave-one-laboratory-out model: its reference the ``quantile`` of that model's own
    clean validation distances, so a shape transfers between models whose distances have other scales."""
    return DistanceTemperature(float(np.quantile(own_clean["distance"], quantile)), float(power))


#: the arrays of ``collect`` with one entry per row (image x condition); the others describe the whole set
PER_ROW = ("logits", "distance", "y", "condition", "image", "stain")


def rows_of(d: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """``d`` cut to ``rows`` (the per-row arrays; condition names, image keys and the laboratory's name stay whole)."""
    return {k: (v[rows] if k in PER_ROW else v) for k, v in d.items()}


def clean_rows(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return rows_of(d, d["condition"] == 0)


def fit_shape(pairs: list[tuple[dict, dict, float]], allowed=None) -> tuple[float, float]:
    """(reference quantile, power) with the lowest NLL, averaged over the *unseen* laboratory's images and the
    model's own clean validation images (home and away weigh the same: a laboratory that installs the model is
    either like the training data or not), over the leave-one-laboratory-out models of ``pairs``.

    Each pair is (unseen laboratory's data, own laboratory's clean validation data, base temperature) of one
    leave-one-laboratory-out model; the reference is the quantile of that model's own clean distances, so the
    shape transfers between models whose distances have different scales. Own-laboratory ECE stays <= 3 %.
    ``allowed(quantile, power)`` (optional) excludes shapes, e.g. those that would take the shipped model's own
    validation ECE above 3 %.
    """
    limits = [ece_limit(own, base) for _, own, base in pairs]
    best: tuple[float, float, float] | None = None
    for q in REFERENCE_QUANTILES:
        references = [float(np.quantile(own["distance"], q)) for _, own, _ in pairs]
        for power in POWERS:
            if allowed is not None and power > 0 and not allowed(q, float(power)):
                continue
            losses, ok = [], True
            for (unseen, own, base), limit, reference in zip(pairs, limits, references, strict=True):
                rule = DistanceTemperature(reference, float(power))
                if ece_of(own, base, rule) > limit:
                    ok = False
                    break
                losses.append(nll(probabilities(unseen["logits"], unseen["distance"], base, rule), unseen["y"]))
                losses.append(nll(probabilities(own["logits"], own["distance"], base, rule), own["y"]))
            if ok and (best is None or np.mean(losses) < best[0] - 1e-9):
                best = (float(np.mean(losses)), q, float(power))
    assert best is not None
    return best[1], best[2]
