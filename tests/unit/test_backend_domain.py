"""The int8 backend's own domain model: fitted on its own features, listed per backend, read by that backend only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.classifier import load_classifier
from pipeline.domain import DomainModel, fit_domain_model
from tests.unit.test_domain import features


def _synthetic(seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train_x, train_y = features(1200, rng, shift)
    val_x, _ = features(400, rng, shift)
    return train_x, train_y, val_x, np.array(["kaggle", "pbc"] * 200)


def test_backend_domain_refits_the_features_part_and_keeps_the_pixel_checks(model_dir):
    from training.field_alarm import with_field_thresholds
    from training.refit_domain import backend_domain

    reference = DomainModel.load(model_dir / "ood.npz")
    train_x, train_y, val_x, labs = _synthetic(0)
    fitted = backend_domain(reference, train_x, train_y, val_x, labs)
    assert fitted.stain is reference.stain and fitted.red_cells is reference.red_cells and fitted.focus is reference.focus
    assert fitted.mean.shape == (train_x.shape[1],) and fitted.field_thresholds is None
    own = fit_domain_model(train_x, train_y, val_x, labs)
    assert fitted.image_threshold == own.image_threshold  # the export's fit, on these features
    cells = fitted.score(val_x[:100])
    with_fields = with_field_thresholds(fitted, cells)
    assert with_fields.field_thresholds is not None and with_fields.field_thresholds[1] == pytest.approx(cells.mean())


@pytest.mark.litert
def test_refit_for_int8_is_listed_digested_and_read_by_the_int8_backend_only(model_dir, tmp_path, monkeypatch):
    """``refit_backend`` on a copy of the shipped model, its features stood in by synthetic ones whose scale differs
    from the fp32 reference: the int8 backend must read the new file, fp32 the old one, both verified."""
    import training.refit_domain as refit_domain
    from training.config import TrainConfig

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["ood"].pop("backends", None)
    manifest["files"].pop("ood.int8.npz", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "ood.int8.npz").unlink(missing_ok=True)
    width = DomainModel.load(copy / "ood.npz").mean.shape[0]
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 4, (8, width))

    def fake_features(model: str, samples: list, backend: str = "litert"):
        assert backend == "litert-int8"
        y = rng.integers(0, 8, len(samples))
        return (centres[y] + rng.normal(0, 1, (len(samples), width))).astype(np.float32), y, np.array(["kaggle", "pbc"] * (len(samples) // 2))

    monkeypatch.setattr(refit_domain, "split_features", fake_features)
    monkeypatch.setattr(refit_domain, "load_splits", lambda path: {"train": [None] * 600, "val": [None] * 300})
    entry = refit_domain.refit_backend(copy, TrainConfig(), "litert-int8", "9.9.9-int8", fields=None)
    written = json.loads((copy / "manifest.json").read_text())
    assert written["version"] == "9.9.9-int8" and written["ood"]["backends"]["litert-int8"] == entry
    assert "ood.int8.npz" in written["files"] and "litert-int8" in written["history"][-1]

    fp32 = load_classifier(copy, "litert", ensemble=False).domain
    int8 = load_classifier(copy, "litert-int8").domain  # the ensemble's domain is its first network's
    assert round(int8.image_threshold, 4) == entry["image_threshold"]
    assert not np.allclose(int8.mean, fp32.mean) and fp32.image_threshold == DomainModel.load(model_dir / "ood.npz").image_threshold
    assert int8.stain is not None and np.allclose(int8.stain.centres, fp32.stain.centres)
    with pytest.raises(SystemExit, match="reads the fp32 domain model"):
        refit_domain.refit_backend(copy, TrainConfig(), "keras", "9.9.10", fields=None)


def test_a_pixel_check_fitted_on_the_model_is_written_for_every_backend(model_dir, tmp_path, monkeypatch):
    """``training.stain_check --focus --fit`` writes the focus reference into ``ood.npz`` and into the int8 backend's
    own domain model (a pixel check is the same for every backend), the manifest's ``ood.focus`` and every digest:
    both backends load and read the new reference."""
    import training.stain_check as check
    from training.data import Sample

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    rng = np.random.default_rng(4)
    samples = [Sample(f"{lab}{i}.jpg", "neutrophil", lab, f"{lab}{i}") for lab in ("kaggle", "pbc") for i in range(150)]
    values = list(rng.normal(0.6, 0.02, 300))  # a sharpness unlike the shipped reference's, to tell them apart
    monkeypatch.setattr(check, "validation_samples", lambda config, classes: samples)
    monkeypatch.setattr(check, "decode", lambda s: s)
    monkeypatch.setattr(check, "focus_of", lambda images, manifest: values)
    reference = check.fit(copy, None, "9.9.9", focus=True)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["version"] == "9.9.9" and manifest["ood"]["focus"]["mean_blur_effect"] == pytest.approx(
        [round(float(np.mean(values[:150])), 4), round(float(np.mean(values[150:])), 4)])
    assert "--fit --focus" in manifest["ood"]["focus"]["fitted_on"] and "litert-int8" in manifest["ood"]["backends"]
    for backend in ("litert", "litert-int8"):
        loaded = load_classifier(copy, backend).domain.focus  # the digests were refreshed, or this load fails
        np.testing.assert_allclose(loaded.means, reference.means)
