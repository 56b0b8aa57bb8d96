"""Stain-aware temperature: the serving factor, its way through batches, its manifest round trip, and the shape fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.batch import BatchLimits, classify_stream
from pipeline.classifier import load_classifier, model_crops, predict_scored, scaled_batch
from pipeline.images import decode_image
from pipeline.stain_check import StainReference, stain_signature
from pipeline.temperature import DistanceTemperature, StainTemperature
from training.stain_temperature import Pair, Rows, figures, fit_stain_shape, stain_rule, write_rule


def test_factor_is_one_up_to_the_reference_and_for_unmeasured_images_then_a_power_of_the_ratio():
    rule = StainTemperature(reference=2.0, power=2.0)
    np.testing.assert_allclose(rule.factors(np.array([0.5, 2.0, 3.0, 8.0, np.nan])), [1.0, 1.0, 2.25, 16.0, 1.0])


def test_image_distances_stay_aligned_with_the_images_and_take_the_nearest_laboratory():
    reference = StainReference(("a", "b"), np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), np.stack([np.eye(3)] * 2),
                               np.ones(2), np.ones(2))
    near_b = tuple(float(np.exp(0.9) - 0.05) for _ in range(3))  # log(OD + EPS) = 0.9: 0.1 per channel from b
    out = reference.image_distances([None, near_b, None])
    assert np.isnan(out[0]) and np.isnan(out[2])
    np.testing.assert_allclose(out[1], np.sqrt(3 * 0.1**2), atol=1e-9)
    np.testing.assert_allclose(out[1], reference.distances([near_b]).min())


def _sample_images(sample_folder: Path, n: int = 12) -> list[np.ndarray]:
    return [decode_image(p.read_bytes(), 10**8) for p in sorted(sample_folder.rglob("*.jp*g"))[:n]]


@pytest.mark.litert
def test_a_model_with_a_stain_rule_is_less_sure_of_far_stains_and_gives_the_same_answers(model_dir, sample_folder, tmp_path):
    """The rule reaches serving through the manifest: confidences fall only for images whose stain lies beyond the
    reference, argmax and feature distances stay; without stains (or without the rule) nothing changes."""
    ruled_dir = tmp_path / "ruled"
    shutil.copytree(model_dir, ruled_dir)
    manifest = json.loads((ruled_dir / "manifest.json").read_text())
    manifest.pop("temperature_stain", None)
    (ruled_dir / "manifest.json").write_text(json.dumps(manifest))
    plain = load_classifier(ruled_dir, "litert")
    assert plain.domain is not None and plain.domain.stain is not None
    crops = model_crops(_sample_images(sample_folder), plain.manifest)
    stains = [stain_signature(c.pixels) for c in crops]
    batch = scaled_batch(crops)
    p_plain, d_plain = predict_scored(plain, batch, stains)
    s = plain.domain.stain.image_distances(stains)
    reference = float(np.nanmedian(s))  # half the samples lie beyond it
    write_rule(str(ruled_dir), StainTemperature(reference, 2.0), "test", {})
    ruled = load_classifier(ruled_dir, "litert")
    assert StainTemperature.from_manifest(ruled.manifest) == StainTemperature(reference, 2.0)
    p_ruled, d_ruled = predict_scored(ruled, batch, stains)
    assert d_ruled == d_plain
    np.testing.assert_array_equal(p_ruled.argmax(axis=1), p_plain.argmax(axis=1))
    far = s > reference
    assert far.any() and (~far).any()
    np.testing.assert_allclose(p_ruled[~far], p_plain[~far], atol=1e-6)
    assert np.all(p_ruled[far].max(axis=1) < p_plain[far].max(axis=1))
    np.testing.assert_allclose(predict_scored(ruled, batch)[0], p_plain, atol=1e-6)  # no stains: feature rule only
    with pytest.raises(ValueError, match="stain signatures for a batch"):
        ruled.scored(batch, stains[:-1])

    # the worker's path: batches carry each image's signature to the model call
    items = [(i, (lambda data=p.read_bytes(): data)) for i, p in enumerate(sorted(sample_folder.rglob("*.jp*g"))[:12])]
    streamed = {r.key: r for b in classify_stream(ruled, items, BatchLimits(size=5), prefetch=1, threads=2) for r in b}
    for i, row in enumerate(p_ruled):
        assert streamed[i].confidence == pytest.approx(float(row.max()), abs=1e-5)


def _rows(rng: np.random.Generator, n: int, wrong_rate: float, stain_centre: float) -> Rows:
    """Images about 95 % sure whether right or wrong (calibrated at a 5 % error rate, over-confident above it)
    whose stain distances centre on ``stain_centre``."""
    y = rng.integers(0, 4, n)
    wrong = rng.random(n) < wrong_rate
    answer = np.where(wrong, (y + 1 + rng.integers(0, 3, n)) % 4, y)
    logits = rng.normal(0, 0.3, (n, 4))
    logits[np.arange(n), answer] += 4.05
    stain = np.abs(stain_centre + rng.normal(0, 0.6, n))
    stain[rng.random(n) < 0.1] = np.nan  # tight crops without red cells
    return Rows(logits, y, np.full(n, 5.0), stain, np.zeros(n, int))


def test_fit_raises_the_temperature_where_the_stain_is_far_and_the_model_is_wrong_more_often():
    rng = np.random.default_rng(0)
    pairs = [Pair(f"p{i}", _rows(rng, 600, 0.4, 5.0), _rows(rng, 600, 0.05, 1.5), 1.0, DistanceTemperature(5.0, 1.1))
             for i in range(2)]
    q, power = fit_stain_shape(pairs)
    assert power > 0
    rule = stain_rule([pairs[0].own], q, power)
    before, after = (figures(pairs[0].unseen, 1.0, pairs[0].feature, r) for r in (None, rule))
    assert after["ece"] < before["ece"] and after["nll"] < before["nll"]
    assert after["accuracy"] == before["accuracy"]
    own = figures(pairs[0].own, 1.0, pairs[0].feature, rule)
    assert own["ece"] <= max(0.03, figures(pairs[0].own, 1.0, pairs[0].feature, None)["ece"])
    assert fit_stain_shape(pairs, allowed=lambda q, p: False) == (0.9, 0.0)  # nothing allowed: no stain factor
