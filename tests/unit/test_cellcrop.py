"""The cell-centred recipe on synthetic smears with known scale, offset and colour cast."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.cellcrop import (
    BACKGROUND_LEVEL,
    CROP_RBC_DIAMETERS,
    FAST,
    MAX_CELL_BOX_RBC,
    background_color,
    cell_crop,
    padded_square,
)
from pipeline.preprocess import RECIPE_CELL_CENTRED, RECIPE_CELL_CENTRED_FAST, RECIPES, model_crop
from tests.conftest import synthetic_field

#: conftest's red cells have radii 38-48 px: a diameter of about 86 px
RBC_DIAMETER = 86.0


def cell_image(center=(180, 180), size=360, seed=0, rbc=14) -> np.ndarray:
    return synthetic_field(size, size, [center], seed=seed, rbc=rbc)


def test_red_cell_diameter_is_measured_and_sets_the_crop_side():
    crop = cell_crop(cell_image(), 160)
    assert crop.found
    assert crop.rbc_diameter_px == pytest.approx(RBC_DIAMETER, rel=0.2)
    assert crop.side_px == pytest.approx(CROP_RBC_DIAMETERS * crop.rbc_diameter_px)
    assert crop.pixels.shape == (160, 160, 3) and crop.pixels.dtype == np.uint8


def test_half_magnification_halves_the_measured_diameter():
    big = cell_image(size=720, rbc=56, seed=1)
    small = cv2.resize(big, (360, 360), interpolation=cv2.INTER_AREA)
    d_big, d_small = cell_crop(big, 160).rbc_diameter_px, cell_crop(small, 160).rbc_diameter_px
    assert d_small / d_big == pytest.approx(0.5, abs=0.08)


def test_off_centre_cell_is_found_and_centred():
    crop = cell_crop(cell_image(center=(250, 120), seed=2), 160)
    assert crop.found
    assert crop.center[0] == pytest.approx(250, abs=20) and crop.center[1] == pytest.approx(120, abs=20)
    # the crop is centred on the cell: its violet nucleus mass sits in the middle
    rgb = crop.pixels.astype(np.int16)
    violet = (rgb[..., 2] - rgb[..., 1]) > 60
    ys, xs = np.nonzero(violet)
    assert abs(xs.mean() - 80) < 16 and abs(ys.mean() - 80) < 16


@pytest.mark.parametrize("cast", [(0.70, 0.95, 1.10), (1.15, 1.0, 0.80)], ids=["yellow", "blue"])
def test_colour_cast_is_removed_by_background_white_balance(cast):
    image = cell_image(seed=3)
    tinted = np.clip(image * np.array(cast), 0, 255).astype(np.uint8)
    plain, shifted = cell_crop(image, 160).pixels.astype(np.float32), cell_crop(tinted, 160).pixels.astype(np.float32)
    glass = background_color(shifted.astype(np.uint8))  # the brightest pixels: bare glass
    assert np.ptp(glass) < 8 and abs(glass.mean() - BACKGROUND_LEVEL) < 10
    # the colour of the whole crop comes back to the untinted one's
    raw_gap = np.abs(tinted.reshape(-1, 3).mean(axis=0) - image.reshape(-1, 3).mean(axis=0)).max()
    gap = np.abs(plain.reshape(-1, 3).mean(axis=0) - shifted.reshape(-1, 3).mean(axis=0)).max()
    assert gap < raw_gap / 3


def test_image_without_a_white_cell_is_reported_not_found():
    only_red_cells = synthetic_field(360, 360, [], seed=4, rbc=14)
    crop = cell_crop(only_red_cells, 160)
    assert not crop.found
    assert crop.pixels.shape == (160, 160, 3)


def test_blank_and_black_images_do_not_crash():
    for image in (np.zeros((100, 100, 3), np.uint8), np.full((100, 100, 3), 255, np.uint8)):
        crop = cell_crop(image, 64)
        assert not crop.found and crop.pixels.shape == (64, 64, 3)


def test_every_recipe_is_registered_and_the_default_is_cell_centred():
    assert RECIPE_CELL_CENTRED in RECIPES
    crop = model_crop(cell_image(), 96)
    assert crop.found and crop.rbc_diameter_px is not None
    with pytest.raises(ValueError, match="recipe"):
        model_crop(cell_image(), 96, "no-such-recipe")


def tight_cell_with_fragments(seed: int = 5) -> np.ndarray:
    """A cell filling a 240 px image, with only small pink slivers of red cells at the edges."""
    rng = np.random.default_rng(seed)
    img = np.empty((240, 240, 3), np.uint8)
    img[:] = (228, 226, 232)
    for x, y in ((6, 10), (230, 14), (12, 228), (226, 232), (120, 4), (4, 120), (236, 118), (118, 236)):
        cv2.circle(img, (x, y), int(rng.integers(8, 11)), (178, 168, 226), -1)
    cv2.circle(img, (120, 120), 104, (214, 196, 222), -1)  # cytoplasm
    for dx, dy in ((-40, -18), (34, -28), (0, 40)):  # a large three-lobed nucleus
        cv2.ellipse(img, (120 + dx, 120 + dy), (46, 36), int(rng.integers(0, 180)), 0, 360, (165, 55, 105), -1)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def test_red_cell_fragments_much_smaller_than_the_cell_are_not_trusted_as_a_ruler():
    """In a tight crop the slivers of red cells cut by the edge measure far too small; the cell's own size is used."""
    crop = cell_crop(tight_cell_with_fragments(), 160)
    assert crop.found
    assert crop.rbc_diameter_px is None
    # the slivers were measured, and distrusted for being under a third of the cell's box
    assert crop.ruler_px is not None and crop.cell_box_px > MAX_CELL_BOX_RBC * crop.ruler_px
    # the whole cell stays in the crop (the crop is at least the image), instead of a zoom onto the nucleus
    assert crop.side_px >= 240


@pytest.mark.parametrize("center", [(180.0, 180.0), (20.0, 340.0), (-400.0, 50.0)])
def test_padded_square_is_the_square_with_glass_where_it_leaves_the_image(center):
    """Inside, a cut of the image; outside, the fill colour; entirely outside, all fill."""
    image = np.random.default_rng(0).integers(0, 256, (360, 300, 3), dtype=np.uint8)
    side, fill = 151.0, (210.4, 220.6, 300.0)
    out = padded_square(image, center, side, fill)
    s, x0, y0 = 151, int(round(center[0] - side / 2)), int(round(center[1] - side / 2))
    expected = np.empty((s, s, 3), np.uint8)
    expected[:] = (210, 220, 255)  # truncated and clipped as uint8
    for y in range(s):
        sy = y0 + y
        if 0 <= sy < 360:
            xs = np.arange(x0, x0 + s)
            inside = (xs >= 0) & (xs < 300)
            expected[y, inside] = image[sy, xs[inside]]
    assert np.array_equal(out, expected)


def test_fast_resampling_finds_the_same_cell_at_the_same_scale_with_nearly_the_same_pixels():
    """FAST changes how the crop is resampled, not what it shows: cell, centre, ruler and colours agree."""
    for image in (cell_image(), cell_image(center=(250, 120), seed=2), cv2.resize(cell_image(size=720, rbc=56, seed=1), (500, 500))):
        exact, fast = cell_crop(image, 160), cell_crop(image, 160, FAST)
        assert fast.found == exact.found
        assert np.hypot(fast.center[0] - exact.center[0], fast.center[1] - exact.center[1]) <= 0.02 * exact.side_px
        assert fast.side_px == pytest.approx(exact.side_px, rel=0.08)  # real images: 5-95 % within -3 % and +4 %
        assert np.allclose(fast.gains, exact.gains, atol=0.02)
        # the synthetic smears' pixel noise is where bilinear and area resampling differ most (real
        # images: 1-3 levels on average); a wrong cell or scale differs by tens of levels
        exact_px, fast_px = exact.pixels.astype(float), fast.pixels.astype(float)
        assert np.abs(fast_px - exact_px).mean() < 6.0
        assert np.abs(cv2.GaussianBlur(fast_px, (0, 0), 2) - cv2.GaussianBlur(exact_px, (0, 0), 2)).mean() < 4.0
    blank = cell_crop(np.full((100, 100, 3), 255, np.uint8), 64, FAST)
    assert not blank.found and blank.pixels.shape == (64, 64, 3)


def test_fast_recipe_is_registered_and_cheaper_resampling_is_its_only_difference():
    crop = model_crop(cell_image(), 96, RECIPE_CELL_CENTRED_FAST)
    assert crop.found and crop.pixels.shape == (96, 96, 3)
    assert np.array_equal(crop.pixels, cell_crop(cell_image(), 96, FAST).pixels)
    assert not np.array_equal(crop.pixels, model_crop(cell_image(), 96).pixels)
