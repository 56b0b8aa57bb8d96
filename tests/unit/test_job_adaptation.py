"""Per-job statistics alignment study (``training.job_adaptation``): the aligned layers do what they claim, the jobs
are what the study says they are."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tensorflow


def _saved_model(tmp_path):
    from training.model import build_model

    model = build_model(4, 32, None)
    (tmp_path / "m").mkdir()
    model.save(str(tmp_path / "m" / "model.keras"))
    return model, tmp_path / "m"


def test_aligned_model_is_the_model_until_switched_on(tmp_path):
    from training.job_adaptation import aligned_model, logits_of

    original, folder = _saved_model(tmp_path)
    model, layers = aligned_model(folder)
    assert len(layers) == 52
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    assert np.allclose(logits_of(model, x, 4), np.asarray(original(x, training=False)), atol=1e-6)


def test_alignment_maps_a_shifted_batch_onto_the_recorded_source_statistics():
    """Recorded on a source batch, the layer maps an affine copy of it (another stain, in effect) back onto the
    source's per-channel mean and spread before its own normalisation; "off" leaves the copy as it is."""
    from training.job_adaptation import AlignedBatchNorm

    layer = AlignedBatchNorm()
    rng = np.random.default_rng(1)
    source = rng.normal([0.5, -1.0, 2.0], [1.0, 0.5, 3.0], (8, 6, 6, 3)).astype(np.float32)
    layer(source)  # build: a fresh layer is an identity up to 1 / sqrt(1 + epsilon)
    layer.mode = "collect"
    layer(source)
    layer.finish_collecting()
    layer.mode = "off"
    shifted = source * np.float32([0.3, 2.0, 1.0]) + np.float32([1.0, 0.0, -4.0])
    scale = np.sqrt(1.0 + layer.epsilon)
    plain = np.asarray(layer(shifted)).reshape(-1, 3) * scale
    assert np.allclose(plain, shifted.reshape(-1, 3), atol=1e-4)
    layer.mode = "adapt"
    aligned = np.asarray(layer(shifted)).reshape(-1, 3) * scale
    flat = source.reshape(-1, 3)
    assert np.allclose(aligned.mean(axis=0), flat.mean(axis=0), atol=1e-3)
    assert np.allclose(aligned.std(axis=0), flat.std(axis=0), rtol=1e-2)
