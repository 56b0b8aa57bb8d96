"""Distance-aware temperature: the serving rule, its manifest round trip, and the fit on synthetic data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.classifier import load_classifier, predict_scored, prepare_batch
from pipeline.images import decode_image
from pipeline.temperature import DistanceTemperature, calibrated_softmax
from training.distance_temperature import write_rule
from training.metrics import fit_temperature, reliability
from training.temperature_shape import fit_rule, score


def test_temperature_is_the_base_up_to_the_reference_then_a_power_of_the_distance_ratio():
    rule = DistanceTemperature(reference=8.0, power=2.0)
    t = rule.temperatures(0.7, np.array([3.0, 8.0, 12.0, 16.0]))
    np.testing.assert_allclose(t, [0.7, 0.7, 0.7 * 1.5**2, 0.7 * 4.0])


def test_softmax_with_one_temperature_per_row_equals_row_by_row():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (5, 8))
    temps = np.array([0.5, 1.0, 2.0, 3.0, 7.0])
    rows = np.concatenate([calibrated_softmax(logits[i : i + 1], float(t)) for i, t in enumerate(temps)])
    np.testing.assert_allclose(calibrated_softmax(logits, temps), rows, rtol=1e-6)


@pytest.mark.litert
def test_a_model_with_a_rule_is_less_sure_of_far_images_and_gives_the_same_answers(model_dir, sample_folder, tmp_path):
    """The rule reaches serving through the manifest: confidences fall where the distance exceeds the reference,
    argmax and distances stay; a manifest without the rule (models before 2.1.2) keeps the constant temperature."""
    plain_dir = tmp_path / "plain"
    shutil.copytree(model_dir, plain_dir)
    manifest = json.loads((plain_dir / "manifest.json").read_text())
    manifest.pop("temperature_distance", None)
    (plain_dir / "manifest.json").write_text(json.dumps(manifest))
    ruled_dir = tmp_path / "ruled"
    shutil.copytree(plain_dir, ruled_dir)
    plain = load_classifier(plain_dir, "litert")
    images = [decode_image(p.read_bytes(), 10**8) for p in sorted(sample_folder.rglob("*.jp*g"))[:12]]
    batch = prepare_batch(images, plain.manifest)
    p_plain, d_plain = predict_scored(plain, batch)
    reference = float(np.median(d_plain))  # half the samples lie beyond it
    write_rule(str(ruled_dir), DistanceTemperature(reference, 3.0), "test", {})
    ruled = load_classifier(ruled_dir, "litert")
    p_ruled, d_ruled = predict_scored(ruled, batch)
    assert d_ruled == d_plain
    np.testing.assert_array_equal(p_ruled.argmax(axis=1), p_plain.argmax(axis=1))
    far = np.array(d_plain) > reference
    assert far.any() and (~far).any()
    np.testing.assert_allclose(p_ruled[~far], p_plain[~far], atol=1e-6)
    assert np.all(p_ruled[far].max(axis=1) < p_plain[far].max(axis=1))
    np.testing.assert_allclose(ruled.predict(batch), p_ruled, atol=1e-6)  # predict() uses the same rule


def _synthetic_lab(seed: int, n: int = 400, conditions: int = 4) -> dict[str, np.ndarray]:
    """Clean images near the data (distance ~7, right 95 % of the time, calibrated logits) and shifted copies that
    lie further (distance grows with the condition) and are wrong more often while the logits stay as sure."""
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("logits", "distance", "y", "condition", "image")}
    y = rng.integers(0, 4, n)
    for c in range(conditions):
        wrong = rng.random(n) < (0.05 + 0.15 * c)
        answer = np.where(wrong, (y + 1 + rng.integers(0, 3, n)) % 4, y)
        logits = rng.normal(0, 0.3, (n, 4))
        logits[np.arange(n), answer] += 3.0
        rows["logits"].append(logits)
        rows["distance"].append(7.0 + 2.0 * c + rng.normal(0, 0.7, n))
        rows["y"].append(y)
        rows["condition"].append(np.full(n, c))
        rows["image"].append(np.arange(n))
    out = {k: np.concatenate(v) for k, v in rows.items()}
    out["names"] = np.array(["baseline/none"] + [f"shift/{c}" for c in range(1, conditions)])
    out["keys"] = np.array([f"img{i}.jpg" for i in range(n)])
    out["lab"] = "synthetic"
    return out


def test_fit_raises_the_temperature_with_distance_when_far_images_are_wrong_more_often():
    data = _synthetic_lab(0)
    clean = data["condition"] == 0
    base = fit_temperature(data["logits"][clean], data["y"][clean])  # calibrated on the clean images, as shipped
    rule = fit_rule([data], base)
    assert rule.power > 0
    before, after = score(data, base, None), score(data, base, rule)
    assert after["shifted_mean_ece"] < before["shifted_mean_ece"] - 0.03
    assert after["shifted_mean_nll"] < before["shifted_mean_nll"]
    probs = calibrated_softmax(data["logits"][clean], rule.temperatures(base, data["distance"][clean]))
    assert reliability(probs, data["y"][clean])[0] <= 0.03 + 1e-9  # the in-domain guard


def test_fit_keeps_the_constant_temperature_when_distance_says_nothing_about_errors():
    """Far copies exactly as often right as near ones, at a temperature calibrated on the near ones: raising T
    beyond the reference only costs likelihood."""
    near = _synthetic_lab(1, conditions=1)
    base = fit_temperature(near["logits"], near["y"])
    copies = 4
    rng = np.random.default_rng(2)
    tiled = {"logits": np.tile(near["logits"], (copies, 1)), "y": np.tile(near["y"], copies),
             "image": np.tile(near["image"], copies), "condition": np.repeat(np.arange(copies), len(near["y"])),
             "keys": near["keys"], "names": np.array(["baseline/none", "a/1", "b/2", "c/3"]), "lab": "synthetic"}
    tiled["distance"] = 7.0 + 2.0 * tiled["condition"] + rng.normal(0, 0.7, len(tiled["y"]))
    rule = fit_rule([tiled], base)
    assert rule.power <= 0.2


def test_shape_fitted_on_one_unseen_laboratory_transfers_to_another_with_other_distance_scales():
    """The cross-fit of ``training.distance_temperature --lolo-root``: the (quantile, power) shape is fitted on one
    model's unseen laboratory and applied to another model whose distances are twice as large."""
    from training.temperature_shape import clean_rows, fit_shape, rows_of

    def pair(seed: int, scale: float) -> tuple[dict, dict, float]:
        d = _synthetic_lab(seed, conditions=4)
        d["distance"] = d["distance"] * scale
        own = clean_rows(d)
        base = fit_temperature(own["logits"], own["y"])
        far = d["condition"] == 3  # the "other laboratory": the furthest, most often wrong copies
        unseen = rows_of(d, far)
        return unseen, own, base

    a, b = pair(3, 1.0), pair(4, 2.0)
    q, power = fit_shape([a])
    assert power > 0
    unseen, own, base = b
    rule = DistanceTemperature(float(np.quantile(own["distance"], q)), power)
    before = reliability(calibrated_softmax(unseen["logits"], base), unseen["y"])[0]
    after = reliability(calibrated_softmax(unseen["logits"], rule.temperatures(base, unseen["distance"])), unseen["y"])[0]
    assert after < before - 0.1


def test_a_constraint_on_the_shipped_model_can_only_narrow_the_choice():
    from training.temperature_shape import clean_rows, fit_shape, rows_of

    d = _synthetic_lab(5, conditions=4)
    own = clean_rows(d)
    far = d["condition"] == 3
    unseen = rows_of(d, far)
    pair = (unseen, own, fit_temperature(own["logits"], own["y"]))
    assert fit_shape([pair])[1] > 0
    assert fit_shape([pair], allowed=lambda q, p: False) == (0.5, 0.0)  # nothing allowed: the constant temperature
    q, power = fit_shape([pair], allowed=lambda q, p: p <= 1.0)
    assert 0 < power <= 1.0
