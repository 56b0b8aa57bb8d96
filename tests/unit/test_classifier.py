"""Classifier backends over a model directory: parity, calibration, manifest checks.

Marked ``litert`` (the serving runtime); only the Keras parity test also needs TensorFlow, so
``-m "not tensorflow"`` still runs every LiteRT serving test.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.batch import classify_batch
from pipeline.classifier import load_classifier, prepare_batch, prepare_cells
from pipeline.images import decode_image
from pipeline.manifest import ModelManifest
from pipeline.preprocess import RECIPES, model_crop, scale_for_mobilenet
from pipeline.temperature import calibrated_softmax
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.litert


def _sample_batch(sample_folder, manifest, n: int = 16) -> np.ndarray:
    paths = sorted(sample_folder.rglob("*.jp*g"))[:n]
    return prepare_batch([decode_image(p.read_bytes(), 10**8) for p in paths], manifest)


@pytest.mark.tensorflow
def test_litert_and_keras_agree_on_sample_images(model_dir, sample_folder):
    lite = load_classifier(model_dir, "litert")
    keras_backend = load_classifier(model_dir, "keras")
    batch = _sample_batch(sample_folder, lite.manifest)
    p_lite, p_keras = lite.predict(batch), keras_backend.predict(batch)
    assert p_lite.shape == (len(batch), len(lite.manifest.classes))
    assert float(np.max(np.abs(p_lite - p_keras))) <= 1e-4
    np.testing.assert_allclose(p_lite.sum(axis=1), 1.0, atol=1e-5)


def test_shipped_model_reads_its_own_sample_labels(model_dir, sample_folder):
    """Sanity, not an accuracy claim: the bundled samples come from the held-out test split."""
    clf = load_classifier(model_dir, "litert")
    paths = sorted(sample_folder.rglob("*.jp*g"))
    results = classify_batch(clf, [(i, p.read_bytes()) for i, p in enumerate(paths)], 10**8)
    truth = [p.parent.name.lower() for p in paths]
    accuracy = np.mean([r.label == t for r, t in zip(results, truth, strict=True)])
    assert accuracy >= 0.8


def test_batch_keeps_going_past_bad_images(model_dir):
    clf = load_classifier(model_dir, "litert")
    results = classify_batch(clf, [(1, jpeg_bytes()), (2, b"junk"), (3, jpeg_bytes(3)[:900])], 10**8)
    assert results[0].label in clf.manifest.classes and results[0].error is None
    assert "not a recognised image" in results[1].error and "truncated" in results[2].error


def test_temperature_changes_confidence_not_ranking():
    logits = np.array([[2.0, 1.0, 0.0]])
    sharp, soft = calibrated_softmax(logits, 0.5), calibrated_softmax(logits, 2.0)
    assert sharp.argmax() == soft.argmax() == 0 and sharp.max() > soft.max()


def test_damaged_model_file_is_refused(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    with open(copy / "model.tflite", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="damaged"):
        ModelManifest.load(copy)


def test_unknown_preprocessing_or_backend_is_refused(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocessing"] = "something-else"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="preprocessing"):
        ModelManifest.load(copy)
    with pytest.raises(ValueError, match="unknown backend"):
        load_classifier(model_dir, "onnx")
    with pytest.raises(FileNotFoundError, match="HEMATOVISION_MODEL_DIR"):
        ModelManifest.load(tmp_path / "nothing")


def test_int8_model_agrees_with_fp32_and_kept_its_validation_accuracy(model_dir, sample_folder):
    int8_info = ModelManifest.load(model_dir).extra["int8"]
    assert int8_info["shipped"] and int8_info["fp32_val_accuracy"] - int8_info["val_accuracy"] <= 0.005
    fp32, int8 = load_classifier(model_dir, "litert"), load_classifier(model_dir, "litert-int8")
    batch = _sample_batch(sample_folder, fp32.manifest, n=54)
    agree = float(np.mean(fp32.predict(batch).argmax(axis=1) == int8.predict(batch).argmax(axis=1)))
    assert agree >= 0.9


def test_int8_backend_refused_when_the_model_has_none(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["int8"] = None
    manifest["files"].pop("model.int8.tflite", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no int8"):
        load_classifier(copy, "litert-int8")


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_round_trips_through_the_manifest_and_serves(model_dir, sample_folder, tmp_path, recipe):
    """A model names its recipe; 1.x models (centre square) and 2.x (cell-centred) both load and classify."""
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocessing"] = recipe
    (copy / "manifest.json").write_text(json.dumps(manifest))
    classifier = load_classifier(copy, "litert")
    assert classifier.manifest.preprocessing == recipe
    images = [decode_image(p.read_bytes(), 10**8) for p in sorted(sample_folder.rglob("*.jp*g"))[:8]]
    batch, found = prepare_cells(images, classifier.manifest)
    expected = np.stack([model_crop(img, classifier.manifest.input_size, recipe).pixels for img in images])
    np.testing.assert_array_equal(batch, scale_for_mobilenet(expected))
    assert all(found)  # every sample is a single-cell image
    probs, features = classifier.predict_with_features(batch)
    assert probs.shape == (8, len(classifier.manifest.classes)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_dihedral_tta_is_the_mean_of_the_eight_views(model_dir, sample_folder):
    plain = load_classifier(model_dir, "litert")
    tta = load_classifier(model_dir, "litert", tta=True)
    batch = _sample_batch(sample_folder, plain.manifest, n=3)
    views = [np.rot90(batch, k, axes=(1, 2)) for k in range(4)]
    views += [v[:, :, ::-1] for v in views]
    expected = np.mean([plain.logits(np.ascontiguousarray(v)) for v in views], axis=0)
    np.testing.assert_allclose(tta.logits(batch), expected, atol=1e-4)
    probs, _, _ = tta.scored(batch)
    mean_features = np.mean([plain.outputs(np.ascontiguousarray(v))[1] for v in views], axis=0)
    calibration = plain.domain.score(mean_features)  # the temperature reads the views' mean features
    np.testing.assert_allclose(probs, calibrated_softmax(expected, tta.temperatures(calibration)), atol=1e-4)


def test_dihedral_tta_scores_the_domain_on_the_image_as_given(model_dir, sample_folder):
    """With TTA the domain check reads the identity view's features, on which the alarm's thresholds were fitted: the
    same features and distances as without TTA (a mean of 8 views lies nearer the class centres and silenced the
    alarm under shift)."""
    plain = load_classifier(model_dir, "litert")
    tta = load_classifier(model_dir, "litert", tta=True)
    batch = _sample_batch(sample_folder, plain.manifest, n=3)
    _, plain_features, plain_distances = plain.scored(batch)
    _, tta_features, tta_distances = tta.scored(batch)
    np.testing.assert_allclose(tta_features, plain_features, atol=1e-5)
    np.testing.assert_allclose(tta_distances, plain_distances, atol=1e-4)


def _with_gate(model_dir, tmp_path, gate: float, **tta):
    """A copy of the model whose manifest carries a TTA gate (``tta.gate``), as ``training.tta_gate`` writes it, and
    any further ``tta`` keys."""
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tta"] = {"gate": gate, "chosen_by": "test", **tta}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_tta_answers_read_the_temperature_of_the_image_as_given_where_the_manifest_says_so(model_dir, sample_folder, tmp_path):
    """Rule G2's candidate (``tta.temperature_distance`` = "as-given"): the 8 views' mean logits are calibrated by
    the distance of the identity view's features; the answers and the domain distances are those of the default
    form, which reads the views' mean features."""
    plain = load_classifier(model_dir, "litert")
    batch = _sample_batch(sample_folder, plain.manifest, n=6)
    default = load_classifier(model_dir, "litert", tta=1)
    as_given = load_classifier(_with_gate(model_dir, tmp_path, 1.0, temperature_distance="as-given"), "litert", tta=1)
    assert as_given.as_given and not default.as_given
    probs, features, distances = as_given.scored(batch)
    _, one_features, one_distances = plain.scored(batch)
    expected = calibrated_softmax(default.logits(batch), as_given.temperatures(plain.domain.score(one_features)))
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    default_probs, _, default_distances = default.scored(batch)
    assert not np.allclose(probs, default_probs, atol=1e-4)  # the two forms differ...
    assert (probs.argmax(axis=1) == default_probs.argmax(axis=1)).all()  # ...in confidence only
    np.testing.assert_allclose(distances, default_distances, atol=1e-5)
    gated = load_classifier(_with_gate(model_dir, tmp_path / "g", 1.0, temperature_distance="as-given"), "litert", tta=2)
    short_of_certain = plain.predict(batch).max(axis=1) < 1.0
    np.testing.assert_allclose(gated.predict(batch)[short_of_certain], probs[short_of_certain], atol=1e-4)
    with pytest.raises(ValueError, match="temperature_distance"):
        load_classifier(_with_gate(model_dir, tmp_path / "bad", 0.6, temperature_distance="median"), "litert", tta=2)


def test_tta_where_unsure_reads_every_view_only_below_the_gate(model_dir, sample_folder, tmp_path):
    """Rule G's setting: images whose one-view top probability is below the gate get full TTA's probabilities,
    the others keep one view's; the domain distances are one view's for every image; the counters say how many
    images were read again."""
    plain = load_classifier(model_dir, "litert")
    full = load_classifier(model_dir, "litert", tta=1)
    batch = _sample_batch(sample_folder, plain.manifest, n=16)
    one_probs, _, one_distances = plain.scored(batch)
    full_probs, _, _ = full.scored(batch)
    top = one_probs.max(axis=1)
    gate = float(np.median(top))  # about half the images on either side
    gated = load_classifier(_with_gate(model_dir, tmp_path, gate), "litert", tta=2)
    probs, _, distances = gated.scored(batch)
    unsure = top < gate
    assert 0 < unsure.sum() < len(batch)
    np.testing.assert_allclose(probs[unsure], full_probs[unsure], atol=1e-4)
    np.testing.assert_allclose(probs[~unsure], one_probs[~unsure], atol=1e-6)
    np.testing.assert_allclose(distances, one_distances, atol=1e-4)
    assert (gated.images, gated.reread) == (len(batch), int(unsure.sum()))


def test_tta_where_unsure_at_the_extremes_is_one_view_or_full_tta(model_dir, sample_folder, tmp_path):
    """Gate 1.0 re-reads every image short of certainty (a float32 top probability of exactly 1.0 is not below it)."""
    plain = load_classifier(model_dir, "litert")
    batch = _sample_batch(sample_folder, plain.manifest, n=6)
    never = load_classifier(_with_gate(model_dir, tmp_path / "a", 1e-6), "litert", tta=2)
    always = load_classifier(_with_gate(model_dir, tmp_path / "b", 1.0), "litert", tta=2)
    np.testing.assert_allclose(never.predict(batch), plain.predict(batch), atol=1e-6)
    assert never.reread == 0
    short_of_certain = plain.predict(batch).max(axis=1) < 1.0
    assert short_of_certain.any()
    full = load_classifier(model_dir, "litert", tta=1).predict(batch)
    np.testing.assert_allclose(always.predict(batch)[short_of_certain], full[short_of_certain], atol=1e-4)
    assert always.reread == int(short_of_certain.sum())


def test_tta_where_unsure_never_asks_a_network_for_more_images_than_the_batch(model_dir, sample_folder, tmp_path):
    """The 7 further views of a batch's unsure images go through the networks in chunks of the batch's size: one call
    of 7 x 64 views would grow each interpreter's memory for good."""
    gated = load_classifier(_with_gate(model_dir, tmp_path, 1.0), "litert", tta=2)
    batch = _sample_batch(sample_folder, gated.manifest, n=3)
    sizes: list[int] = []
    outputs = gated.inner.outputs

    def spy(images):
        sizes.append(len(images))
        return outputs(images)

    gated.inner.outputs = spy
    probs = gated.predict(batch)
    assert max(sizes) == 3 and sum(sizes) == 3 + 7 * gated.reread and gated.reread > 0
    full = load_classifier(model_dir, "litert", tta=1).predict(batch)
    unsure = load_classifier(model_dir, "litert").predict(batch).max(axis=1) < 1.0
    np.testing.assert_allclose(probs[unsure], full[unsure], atol=1e-4)


def test_tta_where_unsure_needs_a_chosen_gate(model_dir, tmp_path):
    """A model without a gate (before 2.4.3) is served with one view under setting 2: nothing chose a gate for it."""
    from pipeline.views import UnsureTTA

    manifest = json.loads((model_dir / "manifest.json").read_text())
    served = load_classifier(model_dir, "litert", tta=2)
    assert isinstance(served, UnsureTTA) == ("gate" in (manifest.get("tta") or {}))
    assert isinstance(load_classifier(_with_gate(model_dir, tmp_path, 0.9), "litert", tta=2), UnsureTTA)
    with pytest.raises(ValueError, match="tta"):
        load_classifier(model_dir, "litert", tta=3)
    with pytest.raises(ValueError, match="gate"):
        UnsureTTA(load_classifier(model_dir, "litert"), 0.0)


def test_describe_says_which_backend_networks_and_views_read_the_images(model_dir, tmp_path):
    from pipeline.classifier import describe

    manifest = json.loads((model_dir / "manifest.json").read_text())
    networks = 1 + len((manifest.get("ensemble") or {}).get("members") or [])
    many = "one network" if networks == 1 else f"mean of {networks} networks"
    assert describe(load_classifier(model_dir, "litert")) == f"LiteRT fp32, {many}, each image as given"
    assert describe(load_classifier(model_dir, "litert", tta=1)) == f"LiteRT fp32, {many}, 8 rotations/flips of every image"
    assert describe(load_classifier(model_dir, "litert", ensemble=False)) == "LiteRT fp32, one network, each image as given"
    gated = load_classifier(_with_gate(model_dir, tmp_path, 0.6), "litert", tta=2)
    assert describe(gated) == f"LiteRT fp32, {many}, 8 rotations/flips where one view's top probability is below 0.6"
