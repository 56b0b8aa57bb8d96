"""The speed-ups inside ``pipeline.cellcrop`` compute exactly what the plain NumPy/OpenCV expressions computed.

Why: models are trained on these crops, so a faster step must be equal, not close. The frozen
fixtures (``test_cellcrop_frozen``) check whole crops on a few dozen images; these check the
replaced steps themselves on every colour, or on thousands of arrays, including the ties and
edge cases a handful of images may never reach.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.cellcrop import BACKGROUND_LEVEL, _lowest_channel, _median_uint8, matter_mask, stain_maps
from pipeline.orderstats import channel_histograms, median_float32, median_of_histograms, percentile_float32


@pytest.fixture(scope="module")
def every_colour() -> np.ndarray:
    """All 2**24 BGR colours as one 4096 x 4096 image."""
    i = np.arange(1 << 24, dtype=np.uint32)
    return np.stack([(i >> 16) & 255, (i >> 8) & 255, i & 255], axis=-1).astype(np.uint8).reshape(4096, 4096, 3)


def test_the_matter_mask_is_the_hsv_saturation_rule_on_every_colour(every_colour):
    gray = cv2.cvtColor(every_colour, cv2.COLOR_BGR2GRAY)
    saturation = cv2.cvtColor(every_colour, cv2.COLOR_BGR2HSV)[..., 1]
    plain = ((gray < int(BACKGROUND_LEVEL) - 22) | (saturation > 40)) & (_lowest_channel(every_colour) > 12)
    mask = matter_mask(every_colour)
    assert mask.dtype == np.uint8
    assert np.array_equal(mask, plain.view(np.uint8))


def test_stain_maps_on_a_view_equal_those_of_a_copy(every_colour):
    view = every_colour[1000:1160:1, 7:327:2]  # strided columns
    for got, want in zip(stain_maps(view), stain_maps(np.ascontiguousarray(view)), strict=True):
        assert np.array_equal(got, want)


def _arrays(rng: np.random.Generator, count: int):
    for trial in range(count):
        n = int(rng.integers(1, 40)) if trial % 3 == 0 else int(rng.integers(1, 3000))
        kind = trial % 4
        if kind == 0:
            yield (rng.random(n) * 255).astype(np.float32)
        elif kind == 1:  # many ties, as distance-transform radii have
            yield (rng.integers(0, 20, n) * np.float32(0.7)).astype(np.float32)
        elif kind == 2:  # neighbours one rounding step apart
            yield rng.integers(0, 3, n).astype(np.float32) + np.float32(1e-5) * rng.integers(0, 3, n).astype(np.float32)
        else:
            yield np.exp(rng.normal(0, 3, n)).astype(np.float32)


def test_percentile_and_median_are_numpy_s_to_the_bit():
    for x in _arrays(np.random.default_rng(0), 4000):
        for q in (10, 50, 85, 90, 99, 100):
            want, got = np.percentile(x, q), percentile_float32(x, q)
            assert type(got) is type(want) and got == want, (len(x), q)
        want, got = np.median(x), median_float32(x)
        assert type(got) is type(want) and got == want, len(x)


def test_medians_from_histograms_are_numpy_s_with_and_without_a_mask():
    rng = np.random.default_rng(1)
    for trial in range(300):
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        image = rng.integers(0, 256 if trial % 2 else 8, (h, w, 3), dtype=np.uint8)
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        values = image[mask.astype(bool)]
        if len(values):
            got = median_of_histograms(channel_histograms(image, mask), len(values))
            assert np.array_equal(got, np.median(values, axis=0).astype(np.float32))
        flat = image.reshape(-1, 3)
        assert np.array_equal(_median_uint8(flat), np.median(flat, axis=0).astype(np.float32))
