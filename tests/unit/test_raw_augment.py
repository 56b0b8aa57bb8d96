"""Laboratory habits on raw images (training.raw_augment): what each does to the image it is given."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.preprocess import to_model_pixels
from tests.conftest import synthetic_field
from training.raw_augment import HABITS, lab_habits, lamp_cast, magnify, raw_augmentation, shift, shrink, tight


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_field(320, 240, [(160, 120)], seed=7, rbc=10)


def test_tight_crop_is_a_smaller_square_of_the_centre(image):
    for seed in range(20):
        out = tight(image, np.random.default_rng(seed))
        assert out.shape[0] == out.shape[1] and 96 <= out.shape[0] <= 360 and out.dtype == np.uint8


def test_magnify_keeps_the_size_and_enlarges_the_content(image):
    out = magnify(image, np.random.default_rng(0))
    assert out.shape == image.shape
    # the violet nucleus covers more of the image after magnification
    def violet(img):
        return float(np.mean((img[..., 0].astype(int) - img[..., 1]) > 60))

    assert violet(out) > 1.3 * violet(image)


def test_shrink_lowers_the_resolution(image):
    out = shrink(image, np.random.default_rng(0))
    assert out.shape[0] < image.shape[0] and out.shape[1] < image.shape[1]


def test_shift_moves_the_content_and_fills_with_glass(image):
    out = shift(image, np.random.default_rng(3))
    assert out.shape == image.shape and not np.array_equal(out, image)


def test_lamp_cast_changes_channel_balance_only(image):
    out = lamp_cast(image, np.random.default_rng(1))
    ratio = out.reshape(-1, 3).mean(axis=0) / image.reshape(-1, 3).mean(axis=0)
    assert np.ptp(ratio) > 0.02 and out.shape == image.shape


def test_habits_are_reproducible_and_at_most_one_changes_the_scale(image, monkeypatch):
    a = lab_habits(image, np.random.default_rng(11))
    b = lab_habits(image, np.random.default_rng(11))
    assert np.array_equal(a, b)
    calls: list[str] = []
    patched = tuple((name, 1.0, (lambda n: lambda img, rng: calls.append(n) or img)(name)) for name, _, _ in HABITS)
    monkeypatch.setattr("training.raw_augment.HABITS", patched)
    lab_habits(image, np.random.default_rng(0))
    assert calls == ["tight", "shift", "lamp_cast"]


def test_every_habit_output_goes_through_the_serving_crop(image):
    rng = np.random.default_rng(5)
    for _, _, fn in HABITS:
        pixels = to_model_pixels(fn(image, rng), 96)
        assert pixels.shape == (96, 96, 3) and pixels.dtype == np.uint8


def test_unknown_raw_augmentation_is_refused():
    with pytest.raises(ValueError, match="lab-habits"):
        raw_augmentation("no-such")
