"""Serving an ensemble (rule E): the logit mean of the shipped networks, one temperature, the first one's features.

The second network here is the shipped int8 file standing in as member 2: a
network whose logits differ from the fp32 one's, which is all these tests need.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.classifier import LogitEnsemble, ensemble_members, load_classifier, prepare_batch
from pipeline.images import decode_image
from pipeline.manifest import ModelManifest, sha256_of
from pipeline.settings import Settings
from pipeline.temperature import calibrated_softmax
from training.ensemble_study import scored, verdict

pytestmark = pytest.mark.litert

TEMPERATURE = 1.3


def _two_networks(model_dir, tmp_path, temperature: float = TEMPERATURE):
    """A copy of the shipped model whose second member is the fp32 network's int8 twin."""
    copy = tmp_path / "ensemble"
    shutil.copytree(model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in (manifest.get("ensemble") or {}).get("members", []):  # the shipped model may already be one
        for backend in ("keras", "litert", "litert-int8"):
            if backend in entry:
                manifest["files"].pop(entry[backend], None)
                (copy / entry[backend]).unlink()
    shutil.copyfile(copy / "model.int8.tflite", copy / "member2.tflite")
    manifest["files"]["member2.tflite"] = sha256_of(copy / "member2.tflite")
    manifest["ensemble"] = {"members": [{"litert": "member2.tflite"}], "temperature": temperature}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _batch(sample_folder, manifest, n: int = 6) -> np.ndarray:
    paths = sorted(sample_folder.rglob("*.jp*g"))[:n]
    return prepare_batch([decode_image(p.read_bytes(), 10**8) for p in paths], manifest)


def test_ensemble_serves_the_mean_of_its_members_logits_at_its_own_temperature(model_dir, sample_folder, tmp_path):
    copy = _two_networks(model_dir, tmp_path)
    ensemble = load_classifier(copy, "litert")
    first = load_classifier(copy, "litert", ensemble=False)
    second = load_classifier(copy, "litert-int8", ensemble=False)
    assert isinstance(ensemble, LogitEnsemble) and not isinstance(first, LogitEnsemble)
    batch = _batch(sample_folder, first.manifest)
    expected = (first.logits(batch).astype(np.float64) + second.logits(batch)) / 2
    assert float(np.max(np.abs(first.logits(batch) - second.logits(batch)))) > 1e-3  # two different networks
    np.testing.assert_allclose(ensemble.logits(batch), expected, atol=1e-5)

    probs, features, distances = ensemble.scored(batch)
    _, first_features, first_distances = first.scored(batch)
    np.testing.assert_array_equal(features, first_features)  # the domain check reads the first member only
    np.testing.assert_array_equal(distances, first_distances)
    assert ensemble.manifest.temperature == TEMPERATURE and first.manifest.temperature != TEMPERATURE
    np.testing.assert_allclose(probs, calibrated_softmax(expected, ensemble.temperatures(distances, None, len(batch))), atol=1e-5)


def test_first_member_alone_keeps_its_own_temperature_and_outputs(model_dir, sample_folder, tmp_path):
    copy = _two_networks(model_dir, tmp_path)
    alone = load_classifier(copy, "litert", ensemble=False)
    batch = _batch(sample_folder, alone.manifest, n=3)
    single = load_classifier(model_dir, "litert", ensemble=False)
    np.testing.assert_allclose(alone.predict(batch), single.predict(batch), atol=1e-6)


def test_ensemble_refuses_a_backend_a_member_has_no_file_for(model_dir, tmp_path):
    copy = _two_networks(model_dir, tmp_path)
    with pytest.raises(ValueError, match="no file for backend 'litert-int8'.*HEMATOVISION_ENSEMBLE=0"):
        load_classifier(copy, "litert-int8")
    assert len(ensemble_members(ModelManifest.load(copy))) == 1
    assert isinstance(load_classifier(copy, "litert-int8", ensemble=False), type(load_classifier(copy, "litert", ensemble=False)))


def test_a_damaged_member_file_is_refused(model_dir, tmp_path):
    copy = _two_networks(model_dir, tmp_path)
    (copy / "member2.tflite").write_bytes(b"not a network")
    with pytest.raises(ValueError, match="member2.tflite is damaged"):
        load_classifier(copy, "litert")


def test_ensemble_with_tta_averages_every_view_of_every_member(model_dir, sample_folder, tmp_path):
    copy = _two_networks(model_dir, tmp_path)
    plain, tta = load_classifier(copy, "litert"), load_classifier(copy, "litert", tta=True)
    batch = _batch(sample_folder, plain.manifest, n=2)
    views = [np.rot90(batch, k, axes=(1, 2)) for k in range(4)]
    views += [v[:, :, ::-1] for v in views]
    expected = np.mean([plain.logits(np.ascontiguousarray(v)) for v in views], axis=0)
    np.testing.assert_allclose(tta.logits(batch), expected, atol=1e-4)
    assert tta.manifest.temperature == TEMPERATURE


def test_an_ensemble_needs_two_members(model_dir):
    with pytest.raises(ValueError, match="at least two"):
        LogitEnsemble([load_classifier(model_dir, "litert", ensemble=False)], 1.0)


def test_ensemble_setting_reads_from_the_environment_and_is_bounded():
    assert Settings.from_env({}).ensemble == 1
    assert Settings.from_env({"HEMATOVISION_ENSEMBLE": "0"}).ensemble == 0
    with pytest.raises(ValueError, match="ENSEMBLE"):
        Settings.from_env({"HEMATOVISION_ENSEMBLE": "2"})


def test_study_scores_members_and_ensemble_with_temperatures_fitted_at_home():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    home = np.eye(4)[y] * 3 + rng.normal(0, 1, (400, 4))
    away = np.eye(4)[y] * 1 + rng.normal(0, 1, (400, 4))
    result = scored(home, y, away, y)
    assert result["own_accuracy"] > result["unseen_accuracy"] > 0.25
    assert 0 < result["unseen_ece"] < 1 and result["unseen_nll"] > 0 and result["temperature"] > 0


def _direction(acc: float, ece: float, nll: float) -> dict:
    return {"gain": {"unseen_accuracy": acc, "unseen_ece": ece, "unseen_nll": nll, "own_accuracy": 0.0}}


def test_rule_e_stage_a_verdict():
    held = verdict({"a": _direction(0.02, -0.01, -0.05), "b": _direction(0.001, -0.002, -0.01)})
    assert held["a1"] and held["a2"] and held["holds"]
    small = verdict({"a": _direction(0.005, -0.01, -0.05), "b": _direction(0.004, -0.01, -0.05)})
    assert not small["a1"] and small["a2"] and not small["holds"]  # +0.45 points on average: below 1.0
    one_down = verdict({"a": _direction(0.04, -0.01, -0.05), "b": _direction(-0.001, -0.01, -0.05)})
    assert not one_down["a1"]
    worse_calibrated = verdict({"a": _direction(0.02, -0.01, 0.01), "b": _direction(0.02, -0.01, -0.05)})
    assert worse_calibrated["a1"] and not worse_calibrated["a2"]


@pytest.mark.tensorflow
def test_assemble_copies_the_member_lists_its_digests_and_fits_the_mean_temperature(model_dir, sample_folder, tmp_path):
    """``training.ensemble`` on two copies of one network: the mean of identical logits is that network's, so the
    ensemble must serve exactly the single network's probabilities at the temperature it refitted."""
    from training.ensemble import assemble

    single = _two_networks(model_dir, tmp_path)  # strip any shipped member, then drop the stand-in one too
    manifest = json.loads((single / "manifest.json").read_text())
    manifest.pop("ensemble")
    manifest["files"].pop("member2.tflite")
    (single / "member2.tflite").unlink()
    (single / "manifest.json").write_text(json.dumps(manifest))

    out = tmp_path / "assembled"
    result = assemble(single, [single], [sample_folder / "pbc"], "9.9.9", out)
    files = ModelManifest.load(out).files  # every digest verified, the new files' included
    assert {"member2.tflite", "member2.keras", "member2.int8.tflite"} <= set(files)
    assert result["members"][0]["litert"] == "member2.tflite" and result["first_member_version"].endswith(manifest["version"])
    ensemble = load_classifier(out, "litert")
    assert isinstance(ensemble, LogitEnsemble) and ensemble.manifest.version == "9.9.9"
    assert ensemble.manifest.temperature == result["temperature"] == result["temperature_fit"]["temperature"]
    batch = _batch(sample_folder, ensemble.manifest, n=4)
    alone = load_classifier(out, "litert", ensemble=False)
    np.testing.assert_allclose(ensemble.logits(batch), alone.logits(batch), atol=1e-5)
    probs, _, distances = ensemble.scored(batch)
    np.testing.assert_allclose(probs, calibrated_softmax(alone.logits(batch), ensemble.temperatures(distances, None, 4)), atol=1e-5)
    with pytest.raises(ValueError, match="already an ensemble"):
        assemble(out, [single], [sample_folder / "pbc"], "9.9.10")
